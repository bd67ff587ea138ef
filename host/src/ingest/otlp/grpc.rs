//! OTLP/gRPC: the logs and trace services on `ingest.otlp.grpc`.
//!
//! In: `opentelemetry.proto.collector.logs.v1.LogsService/Export` and
//! `…trace.v1.TraceService/Export` calls (gzip accepted), each message at most
//! `ingest.otlp.max_request_bytes` after decompression (larger: `OUT_OF_RANGE`, or
//! `RESOURCE_EXHAUSTED` when gzip inflates past it, decompression stopping there; one that
//! does not decode:
//! `INTERNAL`: tonic's answers). With `ingest.api_key`, a call without
//! `authorization: Bearer KEY` is `UNAUTHENTICATED`. Out: the export response, with
//! `partial_success` when the queue refused some. Stops on the shutdown token.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use super::http::partial;
use super::{admit_logs, admit_traces};
use crate::ingest::Admission;

#[derive(Clone)]
struct Svc {
    adm: Arc<Admission>,
    key: Option<Arc<str>>,
}

impl Svc {
    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if crate::auth::constant_time_eq(given.as_bytes(), key.as_bytes()) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "missing or wrong ingest key (authorization: Bearer KEY, see ingest.api_key)",
            ))
        }
    }

    fn source(&self) -> prometheus::IntCounter {
        self.adm
            .metrics
            .events_received
            .with_label_values(&["otlp_grpc"])
    }
}

#[tonic::async_trait]
impl LogsService for Svc {
    async fn export(
        &self,
        req: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.check(&req)?;
        let o = admit_logs(&self.adm, &self.source(), req.get_ref()).await;
        if let Some(e) = o.error {
            return Err(Status::unavailable(e));
        }
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: partial(&o, |rejected, error_message| ExportLogsPartialSuccess {
                rejected_log_records: rejected,
                error_message,
            }),
        }))
    }
}

#[tonic::async_trait]
impl TraceService for Svc {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.check(&req)?;
        let o = admit_traces(&self.adm, &self.source(), req.get_ref()).await;
        if let Some(e) = o.error {
            return Err(Status::unavailable(e));
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: partial(&o, |rejected, error_message| ExportTracePartialSuccess {
                rejected_spans: rejected,
                error_message,
            }),
        }))
    }
}

/// Serves both services on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    adm: Arc<Admission>,
    api_key: Option<String>,
    max_bytes: usize,
    stop: CancellationToken,
) {
    let svc = Svc {
        adm,
        key: api_key.map(Arc::from),
    };
    let logs = LogsServiceServer::new(svc.clone())
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_bytes);
    let traces = TraceServiceServer::new(svc)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_bytes);
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    if let Err(e) = tonic::transport::Server::builder()
        .add_service(logs)
        .add_service(traces)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "OTLP/gRPC ingest server failed");
    }
}
