"""Who may call what: the one table of the api's access rules (reference §3/§4)."""

from __future__ import annotations

from fractal_grpc.auth.principal import Access

_RULES: dict[str, dict[str, Access]] = {
    "fractal.v2.AuthService": {
        "Login": Access.PUBLIC,
        "GetCurrentUser": Access.USER,
        "UpdateCurrentUser": Access.USER,
    },
    "fractal.v2.UserService": {
        "CreateUser": Access.SUPERUSER,
        "GetUser": Access.SUPERUSER,
        "ListUsers": Access.SUPERUSER,
        "UpdateUser": Access.SUPERUSER,
    },
    "fractal.v2.ProjectService": {
        "CreateProject": Access.USER,
        "GetProject": Access.USER,
        "ListProjects": Access.USER,
        "UpdateProject": Access.USER,
        "DeleteProject": Access.USER,
    },
    "fractal.v2.DatasetService": {
        "CreateDataset": Access.USER,
        "GetDataset": Access.USER,
        "ListDatasets": Access.USER,
        "UpdateDataset": Access.USER,
        "DeleteDataset": Access.USER,
        "ExportDataset": Access.USER,
        "ImportDataset": Access.USER,
    },
    "fractal.v2.ImageService": {
        "AddImages": Access.USER,
        "QueryImages": Access.USER,
        "UpdateImage": Access.USER,
        "DeleteImages": Access.USER,
    },
    "fractal.v2.TaskService": {
        "CreateTask": Access.VERIFIED,
        "GetTask": Access.USER,
        "ListTasks": Access.USER,
        "UpdateTask": Access.VERIFIED,
        "DeleteTask": Access.USER,
    },
    "fractal.v2.WorkflowService": {
        "CreateWorkflow": Access.USER,
        "GetWorkflow": Access.USER,
        "ListWorkflows": Access.USER,
        "CreateWorkflowTask": Access.USER,
        "UpdateWorkflow": Access.USER,
        "DeleteWorkflow": Access.USER,
        "GetWorkflowTask": Access.USER,
        "UpdateWorkflowTask": Access.USER,
        "DeleteWorkflowTask": Access.USER,
        "ExportWorkflow": Access.USER,
        "ImportWorkflow": Access.USER,
        "GetWorkflowStatus": Access.USER,
    },
    "fractal.v2.JobService": {
        "SubmitJob": Access.VERIFIED,
        "GetJob": Access.USER,
        "ListJobs": Access.USER,
        "StopJob": Access.USER,
        "WatchJob": Access.USER,
        "DownloadJobFolder": Access.USER,
    },
    "fractal.v2.AdminService": {
        "ListAllProjects": Access.SUPERUSER,
        "ListAllJobs": Access.SUPERUSER,
        "GetAnyJob": Access.SUPERUSER,
        "MarkJobFailed": Access.SUPERUSER,
        "StopAnyJob": Access.SUPERUSER,
        "DownloadAnyJobFolder": Access.SUPERUSER,
        "QueryTasks": Access.SUPERUSER,
        "GetSettings": Access.SUPERUSER,
    },
    "fractal.v2.TaskCollectionService": {
        "CollectPip": Access.VERIFIED,
        "UploadAndCollect": Access.VERIFIED,
        "CollectCustom": Access.VERIFIED,
        "GetCollection": Access.USER,
        "WatchCollection": Access.USER,
        "ListCollections": Access.USER,
        "DeactivateCollection": Access.SUPERUSER,
        "ReactivateCollection": Access.SUPERUSER,
        "DeleteCollection": Access.SUPERUSER,
    },
    "fractal.internal.v1.JobExecutionService": {
        "GetJobSpec": Access.INTERNAL,
        "StreamTaskInputs": Access.INTERNAL,
        "ApplyTaskResult": Access.INTERNAL,
        "ReportTaskProgress": Access.INTERNAL,
        "FinishJob": Access.INTERNAL,
    },
    "fractal.internal.v1.TaskRegistrationService": {
        "ClaimCollection": Access.INTERNAL,
        "ReportCollectionProgress": Access.INTERNAL,
        "FinishCollection": Access.INTERNAL,
        "ReadCollectionWheel": Access.INTERNAL,
    },
}

ACCESS: dict[str, Access] = {
    f"/{service}/{method}": access
    for service, methods in _RULES.items()
    for method, access in methods.items()
}
SERVICES = list(_RULES)
# The services of the internal listener (FRACTAL_API_INTERNAL_ADDRESS); all others are public.
INTERNAL_SERVICES = [name for name in SERVICES if name.startswith("fractal.internal.")]
