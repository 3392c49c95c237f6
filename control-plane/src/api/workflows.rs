//! `reskflow.workflow.v1.Workflows`: definitions, runs and cancel, over the engine.

use reskflow_proto::invalid::Invalid;
use reskflow_proto::pb::workflow::v1 as pb;
use reskflow_proto::pb::workflow::v1::workflows_server;
use tonic::{Request, Response, Status};

use crate::workflow::engine::DefinitionInfo;
use crate::workflow::view::InstanceSummary;
use crate::workflow::{Engine, WorkflowError};

const STATUSES: &[&str] =
    &["RUNNING", "COMPENSATING", "COMPLETED", "FAILED", "COMPENSATED", "COMPENSATION_FAILED", "CANCELLED", "TIMED_OUT"];
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 1000;

#[derive(Clone)]
pub struct WorkflowsApi {
    engine: Engine,
}

impl WorkflowsApi {
    pub fn new(engine: Engine) -> Self {
        WorkflowsApi { engine }
    }

    pub fn into_server(self) -> workflows_server::WorkflowsServer<Self> {
        workflows_server::WorkflowsServer::new(self).max_decoding_message_size(16 * 1024 * 1024)
    }
}

fn definition(d: DefinitionInfo) -> pb::WorkflowDefinition {
    pb::WorkflowDefinition {
        id: d.id,
        version: d.version,
        name: d.name,
        created_at_ms: d.created_at.map_or(0, |t| t.timestamp_millis()),
        definition_json: d.definition.to_string(),
    }
}

fn summary(s: InstanceSummary) -> pb::InstanceSummary {
    pb::InstanceSummary {
        instance_id: s.instance_id,
        workflow_id: s.workflow_id,
        version: s.version,
        status: s.status,
        created_at_ms: s.created_at_ms,
        updated_at_ms: s.updated_at.map_or(0, |t| t.timestamp_millis()),
    }
}

fn check_id(field: &str, id: &str) -> Result<(), Status> {
    super::status::check_id(field, id)
}

fn version(v: i64) -> Result<Option<i64>, Status> {
    match v {
        0 => Ok(None),
        v if v > 0 => Ok(Some(v)),
        _ => Err(Invalid::one("version", "must be a positive version number").into()),
    }
}

#[tonic::async_trait]
impl workflows_server::Workflows for WorkflowsApi {
    async fn register_workflow(
        &self,
        req: Request<pb::RegisterWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowDefinition>, Status> {
        super::auth::require_writer(&req)?;
        let json = req.into_inner().definition_json;
        Ok(Response::new(definition(self.engine.register(&json).await?)))
    }

    async fn get_workflow(
        &self,
        req: Request<pb::GetWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowDefinition>, Status> {
        let r = req.into_inner();
        check_id("id", &r.id)?;
        Ok(Response::new(definition(self.engine.definition_info(&r.id, version(r.version)?).await?)))
    }

    async fn list_workflows(
        &self,
        req: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
        let r = req.into_inner();
        let size = if r.page_size == 0 { DEFAULT_PAGE } else { r.page_size };
        if size > MAX_PAGE {
            return Err(Invalid::one("pageSize", format!("must be between 1 and {MAX_PAGE}")).into());
        }
        if r.page_token.len() > 256 {
            return Err(Invalid::one("pageToken", "is not a token this API returned").into());
        }
        let (page, next_page_token) = self.engine.list_definitions(&r.page_token, size).await?;
        Ok(Response::new(pb::ListWorkflowsResponse {
            workflows: page.into_iter().map(definition).collect(),
            next_page_token,
        }))
    }

    async fn execute(&self, req: Request<pb::ExecuteRequest>) -> Result<Response<pb::ExecuteResponse>, Status> {
        super::auth::require_writer(&req)?;
        let r = req.into_inner();
        check_id("workflowId", &r.workflow_id)?;
        let input = if r.input_json.trim().is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_str(&r.input_json).map_err(|e| Invalid::one("input", format!("is not JSON: {e}")))?
        };
        let key = (!r.idempotency_key.is_empty()).then_some(r.idempotency_key);
        let (instance_id, created) = self.engine.execute(&r.workflow_id, version(r.version)?, input, key).await?;
        let status = self.engine.view(&instance_id).await.map(|v| v.summary.status).unwrap_or_default();
        Ok(Response::new(pb::ExecuteResponse { instance_id, created, status }))
    }

    async fn get_instance(&self, req: Request<pb::GetInstanceRequest>) -> Result<Response<pb::InstanceDetail>, Status> {
        let id = req.into_inner().instance_id;
        if id.is_empty() || id.len() > 64 {
            return Err(Invalid::one("instanceId", "is not a valid instance id").into());
        }
        let view = self.engine.view(&id).await?;
        let detail_json = serde_json::to_string(&view).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::InstanceDetail { summary: Some(summary(view.summary)), detail_json }))
    }

    async fn list_instances(
        &self,
        req: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let r = req.into_inner();
        if !r.workflow_id.is_empty() {
            check_id("workflowId", &r.workflow_id)?;
        }
        let status = (!r.status.is_empty()).then_some(r.status.to_ascii_uppercase());
        if let Some(s) = &status {
            if !STATUSES.contains(&s.as_str()) {
                return Err(Invalid::one("status", format!("must be one of {}", STATUSES.join(", "))).into());
            }
        }
        let size = if r.page_size == 0 { DEFAULT_PAGE } else { r.page_size };
        if size > MAX_PAGE {
            return Err(Invalid::one("pageSize", format!("must be between 1 and {MAX_PAGE}")).into());
        }
        let (page, next_page_token) = self.engine.list(&r.workflow_id, status.as_deref(), &r.page_token, size).await?;
        Ok(Response::new(pb::ListInstancesResponse {
            instances: page.into_iter().map(summary).collect(),
            next_page_token,
        }))
    }

    async fn execute_saga(&self, req: Request<pb::ExecuteSagaRequest>) -> Result<Response<pb::SagaResult>, Status> {
        super::auth::require_writer(&req)?;
        let json = req.into_inner().request_json;
        let (instance_id, created, ended) = self.engine.execute_saga(&json).await?;
        let result = match ended {
            Some(view) => pb::SagaResult {
                status: view.summary.status.clone(),
                detail_json: serde_json::to_string(&view).map_err(|e| Status::internal(e.to_string()))?,
                instance_id,
                created,
                finished: true,
            },
            None => {
                let status = self.engine.view(&instance_id).await.map(|v| v.summary.status).unwrap_or_default();
                pb::SagaResult { instance_id, created, status, finished: false, detail_json: String::new() }
            }
        };
        Ok(Response::new(result))
    }

    async fn cancel(&self, req: Request<pb::CancelRequest>) -> Result<Response<pb::CancelResponse>, Status> {
        super::auth::require_writer(&req)?;
        let id = req.into_inner().instance_id;
        if id.is_empty() || id.len() > 64 {
            return Err(Invalid::one("instanceId", "is not a valid instance id").into());
        }
        self.engine.cancel(&id).await?;
        let status = self.engine.view(&id).await.map(|v| v.summary.status).unwrap_or_default();
        Ok(Response::new(pb::CancelResponse { status }))
    }
}

impl From<WorkflowError> for Status {
    fn from(err: WorkflowError) -> Self {
        match err {
            WorkflowError::Invalid(invalid) => invalid.into(),
            WorkflowError::NotFound { kind, id } => Status::not_found(format!("{kind} {id} not found")),
            WorkflowError::Conflict(msg) => Status::aborted(msg),
            WorkflowError::Unavailable(msg) => Status::unavailable(msg),
            other => {
                tracing::error!(error = %other, "workflow error");
                Status::internal("internal error (logged by the control plane)")
            }
        }
    }
}
