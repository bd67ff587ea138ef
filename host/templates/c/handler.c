// `{name}`: an Outrigger handler plugin in C, built with wit-bindgen (C bindings), clang for
// wasm32-wasi and wasm-tools (see build.sh).
//
// Outrigger calls `exports_handler_init` once per instance with the plugin's config (JSON text,
// from `{name}.yml` beside the .wasm or `plugins.chain[].config`); returning false with a
// message in `err` refuses the plugin. Then `exports_handler_on_batch` gets whole batches: fill
// `ret` with one verdict per event, in order: OUTRIGGER_PLUGIN_TYPES_VERDICT_KEEP, _DROP, or
// _REPLACE with `val.replace` set to the new event. Globals survive between batches of the
// same instance.
//
// Memory (gen/handler.h): the arguments of an exported function belong to it and must be freed
// (the `*_free` helpers); what it returns (`ret`, `err`) must be malloc'ed and is freed by the
// bindings after the host has read it.

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "handler.h"

bool exports_handler_init(handler_string_t *config, handler_string_t *err) {
    (void)err;
    handler_string_t msg;
    handler_string_set(&msg, "{name} starting");
    outrigger_plugin_host_log(OUTRIGGER_PLUGIN_TYPES_LEVEL_INFO, &msg);
    handler_string_free(config);
    return true;
}

void exports_handler_on_batch(handler_list_event_t *events, handler_list_verdict_t *ret) {
    size_t n = events->len;
    ret->ptr = calloc(n ? n : 1, sizeof *ret->ptr);
    ret->len = ret->ptr ? n : 0;
    for (size_t i = 0; i < ret->len; i++) {
        ret->ptr[i].tag = OUTRIGGER_PLUGIN_TYPES_VERDICT_KEEP;
    }
    // Shows up as outrigger_plugin_counter_total{plugin="{name}", name="events"}.
    handler_string_t name;
    handler_string_set(&name, "events");
    outrigger_plugin_host_counter_add(&name, n);
    handler_list_event_free(events);
}
