//! The deployment files in `examples/deploy/` work as written: their configs pass
//! `outrigger check`, and the systemd unit and the Kubernetes manifest agree with them (users,
//! directories, the socket's volume, its group, the plugin volume), so that an application
//! running beside the daemon can reach its socket.
//!
//! The configs use `ingest.socket_mode` and `ingest.socket_group` (SPEC 0.2).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

use crate::harness::BIN;
use crate::wasm;

fn deploy(file: &str) -> PathBuf {
    wasm::root().join("examples/deploy").join(file)
}

/// Runs `outrigger check -c config` with `OUTRIGGER_API_KEY` set or not, and fails with its
/// output unless it passes.
fn check(what: &str, config: &Path, api_key: Option<&str>) {
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "-c"])
        .arg(config)
        .env_remove("OUTRIGGER_CONFIG")
        .env_remove("OUTRIGGER_SOCKET")
        .env_remove("OUTRIGGER_API_KEY");
    if let Some(key) = api_key {
        cmd.env("OUTRIGGER_API_KEY", key);
    }
    let out = cmd.output().expect("run outrigger check");
    assert!(
        out.status.success(),
        "outrigger check refuses {what}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn str_at<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {v:?}"))
}

/// The socket must be group-accessible and the mode a quoted string (unquoted, YAML reads
/// 0660 as the number 432).
fn assert_group_socket(what: &str, cfg: &Value) {
    assert_eq!(
        cfg["ingest"]["socket_mode"],
        Value::from("0660"),
        "{what}: ingest.socket_mode"
    );
}

/// The settings of a systemd unit file, `Key=value` lines.
fn unit_settings(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect()
}

/// `outrigger.yml` passes `check`, and `outrigger.service` runs the daemon on it as user and
/// group `outrigger`, with the socket in the unit's runtime directory and every path the daemon
/// writes in its state directory (the unit has `ProtectSystem=strict`: nothing else is writable).
#[test]
fn systemd_unit_and_its_config_agree_and_pass_check() {
    let config = deploy("outrigger.yml");
    let has_group = Command::new("getent")
        .args(["group", "outrigger"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_group {
        check("examples/deploy/outrigger.yml", &config, None);
    } else {
        // The unit's install steps create the group; here it is missing, and `check` must say
        // so, as `run` would. With a group that exists, the rest of the config passes.
        let out = Command::new(BIN)
            .args(["check", "-c"])
            .arg(&config)
            .env_remove("OUTRIGGER_API_KEY")
            .output()
            .expect("run outrigger check");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a missing group passed check");
        assert!(
            text.contains("ingest.socket_group") && text.contains("outrigger"),
            "{text}"
        );
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("outrigger.yml");
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(text.contains("socket_group: outrigger"), "{text}");
        std::fs::write(
            &copy,
            text.replace("socket_group: outrigger", "socket_group: root"),
        )
        .unwrap();
        check(
            "examples/deploy/outrigger.yml (socket_group: root)",
            &copy,
            None,
        );
    }
    let cfg = yaml(&config);
    assert_group_socket("outrigger.yml", &cfg);

    let unit = std::fs::read_to_string(deploy("outrigger.service")).unwrap();
    let settings = unit_settings(&unit);
    let get = |key: &str| {
        settings
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("outrigger.service has no {key}="))
    };
    assert_eq!(get("User"), "outrigger");
    assert_eq!(get("Group"), "outrigger");
    assert_eq!(get("ProtectSystem"), "strict");
    let exec = get("ExecStart");
    assert!(
        exec.ends_with(" run -c /etc/outrigger/outrigger.yml"),
        "ExecStart={exec}"
    );
    assert!(unit.contains("examples/deploy/outrigger.yml /etc/outrigger/outrigger.yml"));

    let socket = str_at(&cfg["ingest"]["socket"], "ingest.socket");
    let runtime = format!("/run/{}/", get("RuntimeDirectory"));
    assert!(socket.starts_with(&runtime), "{socket} is not in {runtime}");
    assert_eq!(
        cfg["ingest"]["socket_group"],
        Value::from(get("Group")),
        "ingest.socket_group"
    );

    let state = format!("/var/lib/{}/", get("StateDirectory"));
    for (key, v) in [
        ("plugins.cache_dir", &cfg["plugins"]["cache_dir"]),
        ("delivery.spool.dir", &cfg["delivery"]["spool"]["dir"]),
        ("sinks[0].path", &cfg["sinks"][0]["path"]),
    ] {
        let path = str_at(v, key);
        assert!(path.starts_with(&state), "{key} {path} is not in {state}");
    }
}

/// A container of the pod, by name.
fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_sequence()
        .and_then(|s| s.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// Where `container` mounts `volume` (None if it does not).
fn mount_of<'a>(container: &'a Value, volume: &str) -> Option<&'a str> {
    container["volumeMounts"]
        .as_sequence()?
        .iter()
        .find(|m| m["name"] == volume)
        .and_then(|m| m["mountPath"].as_str())
}

/// The name of the emptyDir volume that `container` mounts at the directory holding `path`.
fn volume_holding(pod: &Value, container: &Value, path: &str) -> String {
    let volumes = pod["volumes"].as_sequence().expect("pod volumes");
    for v in volumes {
        let name = str_at(&v["name"], "volume name");
        if let Some(at) = mount_of(container, name)
            && Path::new(path).parent() == Some(Path::new(at))
        {
            assert!(
                v["emptyDir"].is_mapping(),
                "volume {name} is not an emptyDir"
            );
            return name.to_string();
        }
    }
    panic!("{container:?} mounts nothing at the directory of {path}")
}

/// The Kubernetes example: its ConfigMap's config passes `check`; the app and the sidecar share
/// the socket's directory through one emptyDir and the app is told its path; both run as the
/// same user and group, which is the socket's group; the process namespace is shared (so that
/// `--watch-pid` can see the app); plugins come from a volume an initContainer fills.
#[test]
fn kubernetes_example_shares_socket_users_pids_and_plugins() {
    let text = std::fs::read_to_string(deploy("kubernetes-sidecar.yaml")).unwrap();
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .collect();
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} in kubernetes-sidecar.yaml"))
    };
    let configmap = kind("ConfigMap");
    let embedded = str_at(
        &configmap["data"]["outrigger.yml"],
        "ConfigMap outrigger.yml",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("outrigger.yml");
    std::fs::write(&config, embedded).unwrap();
    let pod = &kind("Deployment")["spec"]["template"]["spec"];
    let sidecar = container(&pod["containers"], "outrigger");
    // The control API listens beyond loopback, so the key is required: the pod sets it.
    let env = sidecar["env"].as_sequence().expect("sidecar env");
    assert!(
        env.iter().any(
            |e| e["name"] == "OUTRIGGER_API_KEY" && e["valueFrom"]["secretKeyRef"].is_mapping()
        ),
        "the sidecar gets no OUTRIGGER_API_KEY from a secret"
    );
    check(
        "the ConfigMap of kubernetes-sidecar.yaml",
        &config,
        Some("a-key-from-the-secret"),
    );
    let cfg: Value = serde_yaml::from_str(embedded).unwrap();
    assert_group_socket("the ConfigMap", &cfg);

    assert_eq!(pod["shareProcessNamespace"], Value::from(true));
    let security = &pod["securityContext"];
    let uid = security["runAsUser"].as_u64().expect("runAsUser");
    assert_eq!(security["runAsGroup"].as_u64(), Some(uid), "runAsGroup");
    assert_eq!(security["fsGroup"].as_u64(), Some(uid), "fsGroup");
    assert_eq!(
        cfg["ingest"]["socket_group"].as_u64(),
        Some(uid),
        "ingest.socket_group is the pod's group"
    );

    let app = container(&pod["containers"], "app");
    for c in [app, sidecar] {
        assert!(
            c["securityContext"]["runAsUser"].is_null()
                && c["securityContext"]["runAsGroup"].is_null(),
            "{c:?} overrides the pod's user"
        );
    }
    let socket = str_at(&cfg["ingest"]["socket"], "ingest.socket");
    let shared = volume_holding(pod, sidecar, socket);
    assert_eq!(
        volume_holding(pod, app, socket),
        shared,
        "the app's socket volume"
    );
    let app_env = app["env"].as_sequence().expect("app env");
    assert!(
        app_env
            .iter()
            .any(|e| e["name"] == "OUTRIGGER_SOCKET" && e["value"] == socket),
        "the app is not told the socket path {socket}"
    );

    let script = sidecar["args"]
        .as_sequence()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    assert!(script.contains("--watch-pid"), "{script}");
    let config_dir = mount_of(sidecar, "outrigger-config").expect("config mount");
    assert!(
        script.contains(&format!("-c {config_dir}/outrigger.yml")),
        "{script}"
    );
    let volumes = pod["volumes"].as_sequence().unwrap();
    assert!(volumes.iter().any(|v| v["name"] == "outrigger-config"
        && v["configMap"]["name"] == configmap["metadata"]["name"]));

    let plugins = str_at(&cfg["plugins"]["dir"], "plugins.dir");
    let volume = volumes
        .iter()
        .map(|v| str_at(&v["name"], "volume name"))
        .find(|v| mount_of(sidecar, v) == Some(plugins))
        .unwrap_or_else(|| panic!("the sidecar mounts nothing at plugins.dir {plugins}"));
    let init = pod["initContainers"].as_sequence().expect("initContainers");
    assert!(
        init.iter().any(|c| mount_of(c, volume).is_some()),
        "no initContainer fills the plugin volume {volume}"
    );
}
