//! Per-kind column definitions and cell logic, following the behaviour of
//! upstream's `pkg/printers/internalversion` (as served by the API server,
//! which always renders the wide variant of each row).

use jiff::Timestamp;
use serde_json::{json, Value};

use crate::util::{
    age, arr, b_or, bool_ptr, containers_cells, format_label_selector, format_labels, get,
    human_seconds, i, join_host_port, len_at, list_with_more, name, ob, oi, os, parse_ts, quantity,
    s, selector_string, since,
};
use crate::Column;

/// Produces the cells of one row.
pub(crate) type CellFn = fn(&Value, Timestamp) -> Vec<Value>;

/// Every (group, kind) with a dedicated printer.
pub(crate) const ALL_KINDS: &[(&str, &str)] = &[
    ("", "Pod"),
    ("", "PodTemplate"),
    ("", "ReplicationController"),
    ("", "Service"),
    ("", "Endpoints"),
    ("", "Node"),
    ("", "Event"),
    ("", "Namespace"),
    ("", "Secret"),
    ("", "ServiceAccount"),
    ("", "PersistentVolume"),
    ("", "PersistentVolumeClaim"),
    ("", "ConfigMap"),
    ("", "ResourceQuota"),
    ("", "ComponentStatus"),
    ("apps", "Deployment"),
    ("apps", "ReplicaSet"),
    ("apps", "StatefulSet"),
    ("apps", "DaemonSet"),
    ("apps", "ControllerRevision"),
    ("batch", "Job"),
    ("batch", "CronJob"),
    ("autoscaling", "HorizontalPodAutoscaler"),
    ("autoscaling", "Scale"),
    ("networking.k8s.io", "Ingress"),
    ("networking.k8s.io", "IngressClass"),
    ("networking.k8s.io", "NetworkPolicy"),
    ("networking.k8s.io", "ServiceCIDR"),
    ("networking.k8s.io", "IPAddress"),
    ("policy", "PodDisruptionBudget"),
    ("rbac.authorization.k8s.io", "RoleBinding"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("storage.k8s.io", "StorageClass"),
    ("storage.k8s.io", "VolumeAttributesClass"),
    ("storage.k8s.io", "CSIDriver"),
    ("storage.k8s.io", "CSINode"),
    ("storage.k8s.io", "VolumeAttachment"),
    ("storage.k8s.io", "CSIStorageCapacity"),
    ("coordination.k8s.io", "Lease"),
    ("coordination.k8s.io", "LeaseCandidate"),
    ("discovery.k8s.io", "EndpointSlice"),
    ("events.k8s.io", "Event"),
    ("scheduling.k8s.io", "PriorityClass"),
    ("node.k8s.io", "RuntimeClass"),
    ("certificates.k8s.io", "CertificateSigningRequest"),
    ("certificates.k8s.io", "ClusterTrustBundle"),
    (
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
    ),
    (
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
    ),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
    (
        "admissionregistration.k8s.io",
        "ValidatingAdmissionPolicyBinding",
    ),
    ("admissionregistration.k8s.io", "MutatingAdmissionPolicy"),
    (
        "admissionregistration.k8s.io",
        "MutatingAdmissionPolicyBinding",
    ),
    ("flowcontrol.apiserver.k8s.io", "FlowSchema"),
    ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration"),
    ("internal.apiserver.k8s.io", "StorageVersion"),
    ("storagemigration.k8s.io", "StorageVersionMigration"),
    ("resource.k8s.io", "DeviceClass"),
    ("resource.k8s.io", "ResourceClaim"),
    ("resource.k8s.io", "ResourceClaimTemplate"),
    ("resource.k8s.io", "ResourceSlice"),
    ("apiregistration.k8s.io", "APIService"),
];

// ---------------------------------------------------------------- columns

const NAME_DESC: &str =
    "Name of the object, unique within its namespace (or cluster for cluster-scoped objects).";
const AGE_DESC: &str = "Time since the object was created (from metadata.creationTimestamp).";
const CONTAINERS_DESC: &str = "Names of the containers of the pod template.";
const IMAGES_DESC: &str = "Images used by the containers of the pod template.";

fn col(name: &'static str, type_: &'static str, desc: &str) -> Column {
    Column {
        name,
        type_,
        format: "",
        description: desc.to_string(),
        priority: 0,
    }
}

fn wide(name: &'static str, type_: &'static str, desc: &str) -> Column {
    Column {
        priority: 1,
        ..col(name, type_, desc)
    }
}

fn name_col() -> Column {
    Column {
        format: "name",
        ..col("Name", "string", NAME_DESC)
    }
}

fn age_col() -> Column {
    col("Age", "string", AGE_DESC)
}

/// Upstream's default table columns for kinds without a printer.
pub(crate) fn default_columns() -> Vec<Column> {
    vec![
        name_col(),
        col(
            "Created At",
            "date",
            "Time the object was created (metadata.creationTimestamp), RFC 3339 in UTC.",
        ),
    ]
}

/// Upstream's default table cells: name and RFC 3339 creation time.
pub(crate) fn default_cells(obj: &Value) -> Vec<Value> {
    let created = match parse_ts(get(obj, &["metadata", "creationTimestamp"])) {
        Some(t) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => "0001-01-01T00:00:00Z".to_string(),
    };
    vec![json!(name(obj)), json!(created)]
}

/// Columns and cell function of a kind, `None` when no printer exists.
pub(crate) fn lookup(group: &str, kind: &str) -> Option<(Vec<Column>, CellFn)> {
    let r: (Vec<Column>, CellFn) = match (group, kind) {
        ("", "Pod") => (
            vec![
                name_col(),
                col(
                    "Ready",
                    "string",
                    "Ready containers out of all containers of the pod.",
                ),
                col(
                    "Status",
                    "string",
                    "Aggregated status of the pod and its containers.",
                ),
                col(
                    "Restarts",
                    "string",
                    "Container restarts of the pod, and how long ago the last one happened.",
                ),
                age_col(),
                wide("IP", "string", "IP address allocated to the pod."),
                wide("Node", "string", "Node the pod is scheduled to."),
                wide(
                    "Nominated Node",
                    "string",
                    "Node nominated by the scheduler for preemption.",
                ),
                wide(
                    "Readiness Gates",
                    "string",
                    "True readiness gate conditions out of all readiness gates.",
                ),
            ],
            pod,
        ),
        ("", "PodTemplate") => (
            vec![
                name_col(),
                col("Containers", "string", CONTAINERS_DESC),
                col("Images", "string", IMAGES_DESC),
                col("Pod Labels", "string", "Labels of the pod template."),
            ],
            pod_template,
        ),
        ("", "ReplicationController") => (
            vec![
                name_col(),
                col("Desired", "integer", "Desired number of replicas."),
                col(
                    "Current",
                    "integer",
                    "Most recently observed number of replicas.",
                ),
                col("Ready", "integer", "Number of ready replicas."),
                age_col(),
                wide("Containers", "string", CONTAINERS_DESC),
                wide("Images", "string", IMAGES_DESC),
                wide("Selector", "string", "Label selector of the pods."),
            ],
            replication_controller,
        ),
        ("apps", "ReplicaSet") => (
            vec![
                name_col(),
                col("Desired", "integer", "Desired number of replicas."),
                col(
                    "Current",
                    "integer",
                    "Most recently observed number of replicas.",
                ),
                col("Ready", "integer", "Number of ready replicas."),
                age_col(),
                wide("Containers", "string", CONTAINERS_DESC),
                wide("Images", "string", IMAGES_DESC),
                wide("Selector", "string", "Label selector of the pods."),
            ],
            replica_set,
        ),
        ("apps", "Deployment") => (
            vec![
                name_col(),
                col("Ready", "string", "Ready replicas out of desired replicas."),
                col(
                    "Up-to-date",
                    "string",
                    "Replicas running the latest pod template.",
                ),
                col("Available", "string", "Replicas available to users."),
                age_col(),
                wide("Containers", "string", CONTAINERS_DESC),
                wide("Images", "string", IMAGES_DESC),
                wide("Selector", "string", "Label selector of the pods."),
            ],
            deployment,
        ),
        ("apps", "StatefulSet") => (
            vec![
                name_col(),
                col("Ready", "string", "Ready replicas out of desired replicas."),
                age_col(),
                wide("Containers", "string", CONTAINERS_DESC),
                wide("Images", "string", IMAGES_DESC),
            ],
            stateful_set,
        ),
        ("apps", "DaemonSet") => (
            vec![
                name_col(),
                col(
                    "Desired",
                    "integer",
                    "Number of nodes that should run the daemon pod.",
                ),
                col(
                    "Current",
                    "integer",
                    "Number of nodes running at least one daemon pod.",
                ),
                col(
                    "Ready",
                    "integer",
                    "Number of nodes with a ready daemon pod.",
                ),
                col(
                    "Up-to-date",
                    "integer",
                    "Number of nodes running the updated daemon pod.",
                ),
                col(
                    "Available",
                    "integer",
                    "Number of nodes with an available daemon pod.",
                ),
                col(
                    "Node Selector",
                    "string",
                    "Node selector of the pod template.",
                ),
                age_col(),
                wide("Containers", "string", CONTAINERS_DESC),
                wide("Images", "string", IMAGES_DESC),
                wide("Selector", "string", "Label selector of the pods."),
            ],
            daemon_set,
        ),
        ("apps", "ControllerRevision") => (
            vec![
                name_col(),
                col("Controller", "string", "Controller owning the revision."),
                col("Revision", "string", "Revision number of the state data."),
                age_col(),
            ],
            controller_revision,
        ),
        ("batch", "Job") => (
            vec![
                name_col(),
                col("Status", "string", "Status of the job."),
                col(
                    "Completions",
                    "string",
                    "Succeeded pods out of desired completions.",
                ),
                col(
                    "Duration",
                    "string",
                    "Time the job took (or has been running).",
                ),
                age_col(),
                wide("Containers", "string", CONTAINERS_DESC),
                wide("Images", "string", IMAGES_DESC),
                wide("Selector", "string", "Label selector of the pods."),
            ],
            job,
        ),
        ("batch", "CronJob") => (
            vec![
                name_col(),
                col("Schedule", "string", "Cron schedule."),
                col("Timezone", "string", "Time zone of the schedule."),
                col(
                    "Suspend",
                    "boolean",
                    "Whether subsequent runs are suspended.",
                ),
                col("Active", "integer", "Number of running jobs."),
                col(
                    "Last Schedule",
                    "string",
                    "Time since the job was last scheduled.",
                ),
                age_col(),
                wide("Containers", "string", CONTAINERS_DESC),
                wide("Images", "string", IMAGES_DESC),
                wide("Selector", "string", "Label selector of the job's pods."),
            ],
            cron_job,
        ),
        ("", "Service") => (
            vec![
                name_col(),
                col("Type", "string", "Type of the service."),
                col("Cluster-IP", "string", "Cluster IP address of the service."),
                col(
                    "External-IP",
                    "string",
                    "External addresses of the service.",
                ),
                col("Port(s)", "string", "Ports exposed by the service."),
                age_col(),
                wide("Selector", "string", "Label selector of the backing pods."),
            ],
            service,
        ),
        ("networking.k8s.io", "Ingress") => (
            vec![
                name_col(),
                col("Class", "string", "IngressClass used by the ingress."),
                col("Hosts", "string", "Hosts matched by the ingress rules."),
                col("Address", "string", "Load-balancer ingress points."),
                col("Ports", "string", "Ports served by the ingress."),
                age_col(),
            ],
            ingress,
        ),
        ("networking.k8s.io", "IngressClass") => (
            vec![
                name_col(),
                col("Controller", "string", "Controller implementing the class."),
                col(
                    "Parameters",
                    "string",
                    "Reference to additional parameters.",
                ),
                age_col(),
            ],
            ingress_class,
        ),
        ("networking.k8s.io", "NetworkPolicy") => (
            vec![
                name_col(),
                col(
                    "Pod-Selector",
                    "string",
                    "Selector of the pods the policy applies to.",
                ),
                age_col(),
            ],
            network_policy,
        ),
        ("networking.k8s.io", "ServiceCIDR") => (
            vec![
                name_col(),
                col("CIDRs", "string", "CIDRs of the service IP range."),
                age_col(),
            ],
            service_cidr,
        ),
        ("networking.k8s.io", "IPAddress") => (
            vec![
                name_col(),
                col(
                    "ParentRef",
                    "string",
                    "Object the IP address is allocated to.",
                ),
            ],
            ip_address,
        ),
        ("", "Endpoints") => (
            vec![
                name_col(),
                col("Endpoints", "string", "Endpoint addresses and ports."),
                age_col(),
            ],
            endpoints,
        ),
        ("discovery.k8s.io", "EndpointSlice") => (
            vec![
                name_col(),
                col(
                    "AddressType",
                    "string",
                    "Type of the addresses of the slice.",
                ),
                col("Ports", "string", "Ports of the slice."),
                col("Endpoints", "string", "Endpoint addresses of the slice."),
                age_col(),
            ],
            endpoint_slice,
        ),
        ("", "Node") => (
            vec![
                name_col(),
                col("Status", "string", "Status of the node."),
                col("Roles", "string", "Roles of the node."),
                age_col(),
                col("Version", "string", "Kubelet version of the node."),
                wide("Internal-IP", "string", "Internal IP address of the node."),
                wide("External-IP", "string", "External IP address of the node."),
                wide("OS-Image", "string", "Operating system image of the node."),
                wide("Kernel-Version", "string", "Kernel version of the node."),
                wide(
                    "Container-Runtime",
                    "string",
                    "Container runtime version of the node.",
                ),
            ],
            node,
        ),
        ("", "Event") | ("events.k8s.io", "Event") => (
            vec![
                col("Last Seen", "string", "Time since the event was last seen."),
                col("Type", "string", "Type of the event (Normal, Warning)."),
                col("Reason", "string", "Short reason of the event."),
                col("Object", "string", "Object the event is about."),
                wide(
                    "Subobject",
                    "string",
                    "Field path of the part of the object the event is about.",
                ),
                wide("Source", "string", "Component that reported the event."),
                col("Message", "string", "Description of the event."),
                wide(
                    "First Seen",
                    "string",
                    "Time since the event was first seen.",
                ),
                wide("Count", "string", "Number of times the event occurred."),
                Column {
                    priority: 1,
                    ..name_col()
                },
            ],
            event,
        ),
        ("", "Namespace") => (
            vec![
                name_col(),
                col("Status", "string", "Phase of the namespace."),
                age_col(),
            ],
            namespace,
        ),
        ("", "Secret") => (
            vec![
                name_col(),
                col("Type", "string", "Type of the secret."),
                col("Data", "string", "Number of data entries."),
                age_col(),
            ],
            secret,
        ),
        ("", "ServiceAccount") => (
            vec![
                name_col(),
                col(
                    "Secrets",
                    "string",
                    "Number of secrets of the service account.",
                ),
                age_col(),
            ],
            service_account,
        ),
        ("", "PersistentVolume") => (
            vec![
                name_col(),
                col("Capacity", "string", "Storage capacity of the volume."),
                col("Access Modes", "string", "Access modes of the volume."),
                col(
                    "Reclaim Policy",
                    "string",
                    "What happens to the volume when released.",
                ),
                col("Status", "string", "Phase of the volume."),
                col("Claim", "string", "Claim bound to the volume."),
                col("StorageClass", "string", "StorageClass of the volume."),
                col(
                    "VolumeAttributesClass",
                    "string",
                    "VolumeAttributesClass of the volume.",
                ),
                col("Reason", "string", "Reason of the volume phase."),
                age_col(),
                wide("VolumeMode", "string", "Filesystem or Block volume."),
            ],
            persistent_volume,
        ),
        ("", "PersistentVolumeClaim") => (
            vec![
                name_col(),
                col("Status", "string", "Phase of the claim."),
                col("Volume", "string", "Volume bound to the claim."),
                col("Capacity", "string", "Actual capacity of the bound volume."),
                col(
                    "Access Modes",
                    "string",
                    "Access modes of the bound volume.",
                ),
                col("StorageClass", "string", "StorageClass of the claim."),
                col(
                    "VolumeAttributesClass",
                    "string",
                    "VolumeAttributesClass of the claim.",
                ),
                age_col(),
                wide("VolumeMode", "string", "Filesystem or Block volume."),
            ],
            persistent_volume_claim,
        ),
        ("apiregistration.k8s.io", "APIService") => (
            vec![
                name_col(),
                col(
                    "Service",
                    "string",
                    "The service that serves this API (Local: the API server itself).",
                ),
                col("Available", "string", "Whether this API is available."),
                age_col(),
            ],
            api_service,
        ),
        ("", "ComponentStatus") => (
            vec![
                name_col(),
                col("Status", "string", "Health of the component."),
                col("Message", "string", "Message of the health condition."),
                col("Error", "string", "Error of the health condition."),
            ],
            component_status,
        ),
        ("autoscaling", "HorizontalPodAutoscaler") => (
            vec![
                name_col(),
                col("Reference", "string", "Object scaled by the autoscaler."),
                col("Targets", "string", "Current and target metric values."),
                col("MinPods", "string", "Lower limit of replicas."),
                col("MaxPods", "string", "Upper limit of replicas."),
                col("Replicas", "string", "Current number of replicas."),
                age_col(),
            ],
            hpa,
        ),
        ("autoscaling", "Scale") => (
            vec![
                col("Name", "string", NAME_DESC),
                col("Desired", "integer", "Desired number of replicas."),
                col("Available", "integer", "Actual number of replicas."),
                age_col(),
            ],
            scale,
        ),
        ("", "ConfigMap") => (
            vec![
                name_col(),
                col("Data", "string", "Number of data and binaryData entries."),
                age_col(),
            ],
            config_map,
        ),
        ("rbac.authorization.k8s.io", "RoleBinding") => (
            vec![
                name_col(),
                col("Role", "string", "Role referenced by the binding."),
                age_col(),
                wide("Users", "string", "Users bound."),
                wide("Groups", "string", "Groups bound."),
                wide("ServiceAccounts", "string", "Service accounts bound."),
            ],
            role_binding,
        ),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => (
            vec![
                name_col(),
                col("Role", "string", "Role referenced by the binding."),
                age_col(),
                wide("Users", "string", "Users bound."),
                wide("Groups", "string", "Groups bound."),
                wide("ServiceAccounts", "string", "Service accounts bound."),
            ],
            role_binding,
        ),
        ("certificates.k8s.io", "CertificateSigningRequest") => (
            vec![
                name_col(),
                age_col(),
                col(
                    "SignerName",
                    "string",
                    "Signer requested for the certificate.",
                ),
                col("Requestor", "string", "User that created the request."),
                col(
                    "RequestedDuration",
                    "string",
                    "Requested validity of the certificate.",
                ),
                col(
                    "Condition",
                    "string",
                    "Approval and issuance state of the request.",
                ),
            ],
            csr,
        ),
        ("certificates.k8s.io", "ClusterTrustBundle") => (
            vec![
                name_col(),
                col("SignerName", "string", "Signer associated with the bundle."),
            ],
            cluster_trust_bundle,
        ),
        ("coordination.k8s.io", "Lease") => (
            vec![
                name_col(),
                col("Holder", "string", "Identity of the lease holder."),
                age_col(),
            ],
            lease,
        ),
        ("coordination.k8s.io", "LeaseCandidate") => (
            vec![
                name_col(),
                col("LeaseName", "string", "Lease the candidate runs for."),
                col(
                    "BinaryVersion",
                    "string",
                    "Binary version of the candidate.",
                ),
                col(
                    "EmulationVersion",
                    "string",
                    "Emulation version of the candidate.",
                ),
                age_col(),
            ],
            lease_candidate,
        ),
        ("storage.k8s.io", "StorageClass") => (
            vec![
                name_col(),
                col("Provisioner", "string", "Provisioner of the volumes."),
                col(
                    "ReclaimPolicy",
                    "string",
                    "Reclaim policy of provisioned volumes.",
                ),
                col(
                    "VolumeBindingMode",
                    "string",
                    "When volumes are bound and provisioned.",
                ),
                col(
                    "AllowVolumeExpansion",
                    "string",
                    "Whether volumes can be expanded.",
                ),
                age_col(),
            ],
            storage_class,
        ),
        ("storage.k8s.io", "VolumeAttributesClass") => (
            vec![
                name_col(),
                col("DriverName", "string", "CSI driver of the class."),
                age_col(),
            ],
            volume_attributes_class,
        ),
        ("", "ResourceQuota") => (
            vec![
                name_col(),
                col("Request", "string", "Used and hard quota of requests."),
                col("Limit", "string", "Used and hard quota of limits."),
                age_col(),
            ],
            resource_quota,
        ),
        ("scheduling.k8s.io", "PriorityClass") => (
            vec![
                name_col(),
                col("Value", "integer", "Priority value."),
                col(
                    "Global-Default",
                    "boolean",
                    "Whether this is the default priority class.",
                ),
                age_col(),
                col(
                    "PreemptionPolicy",
                    "string",
                    "Preemption policy of the class.",
                ),
            ],
            priority_class,
        ),
        ("node.k8s.io", "RuntimeClass") => (
            vec![
                name_col(),
                col("Handler", "string", "CRI handler of the runtime class."),
                age_col(),
            ],
            runtime_class,
        ),
        ("storage.k8s.io", "VolumeAttachment") => (
            vec![
                name_col(),
                Column {
                    format: "name",
                    ..col(
                        "Attacher",
                        "string",
                        "Volume driver handling the attachment.",
                    )
                },
                col("PV", "string", "Persistent volume attached."),
                col("Node", "string", "Node the volume is attached to."),
                col("Attached", "boolean", "Whether the volume is attached."),
                age_col(),
            ],
            volume_attachment,
        ),
        ("storage.k8s.io", "CSINode") => (
            vec![
                name_col(),
                col(
                    "Drivers",
                    "integer",
                    "Number of CSI drivers registered on the node.",
                ),
                age_col(),
            ],
            csi_node,
        ),
        ("storage.k8s.io", "CSIDriver") => (
            vec![
                name_col(),
                col(
                    "AttachRequired",
                    "boolean",
                    "Whether volumes need an attach operation.",
                ),
                col(
                    "PodInfoOnMount",
                    "boolean",
                    "Whether pod information is passed on mount.",
                ),
                col(
                    "StorageCapacity",
                    "boolean",
                    "Whether storage capacity is considered when scheduling.",
                ),
                col(
                    "TokenRequests",
                    "string",
                    "Audiences of service account tokens passed to the driver.",
                ),
                col(
                    "RequiresRepublish",
                    "boolean",
                    "Whether volumes are periodically republished.",
                ),
                col("Modes", "string", "Volume lifecycle modes supported."),
                age_col(),
            ],
            csi_driver,
        ),
        ("storage.k8s.io", "CSIStorageCapacity") => (
            vec![
                name_col(),
                col(
                    "StorageClassName",
                    "string",
                    "StorageClass the capacity applies to.",
                ),
                col("Capacity", "string", "Available capacity."),
            ],
            csi_storage_capacity,
        ),
        ("admissionregistration.k8s.io", "MutatingWebhookConfiguration")
        | ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration") => (
            vec![
                name_col(),
                col(
                    "Webhooks",
                    "integer",
                    "Number of webhooks in the configuration.",
                ),
                age_col(),
            ],
            webhook_configuration,
        ),
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy") => (
            vec![
                name_col(),
                col(
                    "Validations",
                    "integer",
                    "Number of validation rules of the policy.",
                ),
                col("ParamKind", "string", "Kind of the parameter resources."),
                age_col(),
            ],
            validating_admission_policy,
        ),
        ("admissionregistration.k8s.io", "MutatingAdmissionPolicy") => (
            vec![
                name_col(),
                col("Mutations", "integer", "Number of mutations of the policy."),
                col("ParamKind", "string", "Kind of the parameter resources."),
                age_col(),
            ],
            mutating_admission_policy,
        ),
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding")
        | ("admissionregistration.k8s.io", "MutatingAdmissionPolicyBinding") => (
            vec![
                name_col(),
                col("PolicyName", "string", "Policy the binding refers to."),
                col("ParamRef", "string", "Parameter resource of the binding."),
                age_col(),
            ],
            admission_policy_binding,
        ),
        ("flowcontrol.apiserver.k8s.io", "FlowSchema") => (
            vec![
                name_col(),
                col(
                    "PriorityLevel",
                    "string",
                    "Priority level the flows are assigned to.",
                ),
                col(
                    "MatchingPrecedence",
                    "string",
                    "Precedence among flow schemas.",
                ),
                col(
                    "DistinguisherMethod",
                    "string",
                    "How flows are distinguished.",
                ),
                age_col(),
                col(
                    "MissingPL",
                    "string",
                    "Whether the referenced priority level is missing.",
                ),
            ],
            flow_schema,
        ),
        ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration") => (
            vec![
                name_col(),
                col("Type", "string", "Exempt or Limited."),
                col(
                    "NominalConcurrencyShares",
                    "string",
                    "Nominal concurrency shares.",
                ),
                col("Queues", "string", "Number of queues."),
                col("HandSize", "string", "Shuffle sharding hand size."),
                col("QueueLengthLimit", "string", "Maximum queue length."),
                age_col(),
            ],
            priority_level,
        ),
        ("internal.apiserver.k8s.io", "StorageVersion") => (
            vec![
                name_col(),
                col(
                    "CommonEncodingVersion",
                    "string",
                    "Encoding version all API servers agree on.",
                ),
                col(
                    "StorageVersions",
                    "string",
                    "Encoding version of each API server.",
                ),
                age_col(),
            ],
            storage_version,
        ),
        ("storagemigration.k8s.io", "StorageVersionMigration") => (
            vec![
                col("Name", "string", NAME_DESC),
                col("Resource", "string", "Fully qualified resource to migrate."),
            ],
            storage_version_migration,
        ),
        ("policy", "PodDisruptionBudget") => (
            vec![
                name_col(),
                col(
                    "Min Available",
                    "string",
                    "Minimum number of pods that must be available.",
                ),
                col(
                    "Max Unavailable",
                    "string",
                    "Maximum number of pods that may be unavailable.",
                ),
                col(
                    "Allowed Disruptions",
                    "integer",
                    "Number of pods that may be disrupted now.",
                ),
                age_col(),
            ],
            pdb,
        ),
        ("resource.k8s.io", "DeviceClass") | ("resource.k8s.io", "ResourceClaimTemplate") => {
            (vec![name_col(), age_col()], name_age)
        }
        ("resource.k8s.io", "ResourceClaim") => (
            vec![
                name_col(),
                col(
                    "State",
                    "string",
                    "Summary of the claim state (allocated, pending, reserved...).",
                ),
                age_col(),
            ],
            resource_claim,
        ),
        ("resource.k8s.io", "ResourceSlice") => (
            vec![
                name_col(),
                col("Node", "string", "Node providing the resources."),
                col("Driver", "string", "Driver providing the resources."),
                col("Pool", "string", "Pool of the resources."),
                age_col(),
            ],
            resource_slice,
        ),
        _ => return None,
    };
    Some(r)
}

// ---------------------------------------------------------------- pods

fn is_restartable_init(pod: &Value, container_name: &str) -> bool {
    arr(pod, &["spec", "initContainers"])
        .iter()
        .any(|c| s(c, &["name"]) == container_name && s(c, &["restartPolicy"]) == "Always")
}

fn has_condition(obj: &Value, type_: &str) -> bool {
    arr(obj, &["status", "conditions"])
        .iter()
        .find(|c| s(c, &["type"]) == type_)
        .is_some_and(|c| s(c, &["status"]) == "True")
}

/// Updates `last` with `lastState.terminated.finishedAt` of a container status.
fn note_restart(cs: &Value, last: &mut Option<Timestamp>) {
    if get(cs, &["lastState", "terminated"]).is_some() {
        if let Some(t) = parse_ts(get(cs, &["lastState", "terminated", "finishedAt"])) {
            if last.is_none_or(|l| l < t) {
                *last = Some(t);
            }
        }
    }
}

fn pod(p: &Value, now: Timestamp) -> Vec<Value> {
    let init_specs = arr(p, &["spec", "initContainers"]);
    let mut total = arr(p, &["spec", "containers"]).len();
    total += init_specs
        .iter()
        .filter(|c| s(c, &["restartPolicy"]) == "Always")
        .count();
    let mut ready = 0usize;
    let mut restarts = 0i64;
    let mut sidecar_restarts = 0i64;
    let mut last_restart: Option<Timestamp> = None;
    let mut last_sidecar_restart: Option<Timestamp> = None;

    let phase = s(p, &["status", "phase"]);
    let mut reason = phase.to_string();
    let status_reason = s(p, &["status", "reason"]);
    if !status_reason.is_empty() {
        reason = status_reason.to_string();
    }
    for c in arr(p, &["status", "conditions"]) {
        if s(c, &["type"]) == "PodScheduled" && s(c, &["reason"]) == "SchedulingGated" {
            reason = "SchedulingGated".to_string();
        }
    }

    let mut initializing = false;
    for (idx, cs) in arr(p, &["status", "initContainerStatuses"])
        .iter()
        .enumerate()
    {
        restarts += i(cs, &["restartCount"]);
        note_restart(cs, &mut last_restart);
        let restartable = is_restartable_init(p, s(cs, &["name"]));
        if restartable {
            sidecar_restarts += i(cs, &["restartCount"]);
            note_restart(cs, &mut last_sidecar_restart);
        }
        let terminated = get(cs, &["state", "terminated"]);
        let waiting = get(cs, &["state", "waiting"]);
        if terminated.is_some_and(|t| i(t, &["exitCode"]) == 0) {
            continue;
        }
        if restartable && ob(cs, &["started"]) == Some(true) {
            if ob(cs, &["ready"]) == Some(true) {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            let r = s(t, &["reason"]);
            reason = if r.is_empty() {
                let sig = i(t, &["signal"]);
                if sig != 0 {
                    format!("Init:Signal:{sig}")
                } else {
                    format!("Init:ExitCode:{}", i(t, &["exitCode"]))
                }
            } else {
                format!("Init:{r}")
            };
        } else if let Some(w) = waiting
            .filter(|w| !s(w, &["reason"]).is_empty() && s(w, &["reason"]) != "PodInitializing")
        {
            reason = format!("Init:{}", s(w, &["reason"]));
        } else {
            reason = format!("Init:{}/{}", idx, init_specs.len());
        }
        initializing = true;
        break;
    }

    if !initializing || has_condition(p, "Initialized") {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        for cs in arr(p, &["status", "containerStatuses"]).iter().rev() {
            restarts += i(cs, &["restartCount"]);
            note_restart(cs, &mut last_restart);
            let waiting_reason = os(cs, &["state", "waiting", "reason"]).unwrap_or("");
            let terminated = get(cs, &["state", "terminated"]);
            if get(cs, &["state", "waiting"]).is_some() && !waiting_reason.is_empty() {
                reason = waiting_reason.to_string();
            } else if let Some(t) = terminated {
                let r = s(t, &["reason"]);
                reason = if !r.is_empty() {
                    r.to_string()
                } else if i(t, &["signal"]) != 0 {
                    format!("Signal:{}", i(t, &["signal"]))
                } else {
                    format!("ExitCode:{}", i(t, &["exitCode"]))
                };
            } else if ob(cs, &["ready"]) == Some(true) && get(cs, &["state", "running"]).is_some() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if has_condition(p, "Ready") {
                "Running".to_string()
            } else {
                "NotReady".to_string()
            };
        }
    }

    if get(p, &["metadata", "deletionTimestamp"]).is_some() {
        if status_reason == "NodeLost" {
            reason = "Unknown".to_string();
        } else if phase != "Failed" && phase != "Succeeded" {
            reason = "Terminating".to_string();
        }
    }

    let restarts_str = match last_restart {
        Some(t) if restarts != 0 => format!(
            "{restarts} ({} ago)",
            human_seconds(now.duration_since(t).as_secs())
        ),
        _ => restarts.to_string(),
    };

    let mut ip = arr(p, &["status", "podIPs"])
        .first()
        .map(|x| s(x, &["ip"]))
        .unwrap_or("")
        .to_string();
    if ip.is_empty() {
        ip = s(p, &["status", "podIP"]).to_string();
    }
    let none_if_empty = |x: String| {
        if x.is_empty() {
            "<none>".to_string()
        } else {
            x
        }
    };
    let gates = arr(p, &["spec", "readinessGates"]);
    let readiness = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let ok = gates
            .iter()
            .filter(|g| {
                let ct = s(g, &["conditionType"]);
                arr(p, &["status", "conditions"])
                    .iter()
                    .find(|c| s(c, &["type"]) == ct)
                    .is_some_and(|c| s(c, &["status"]) == "True")
            })
            .count();
        format!("{ok}/{}", gates.len())
    };

    vec![
        json!(name(p)),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_str),
        json!(age(p, now)),
        json!(none_if_empty(ip)),
        json!(none_if_empty(s(p, &["spec", "nodeName"]).to_string())),
        json!(none_if_empty(
            s(p, &["status", "nominatedNodeName"]).to_string()
        )),
        json!(readiness),
    ]
}

fn pod_template(o: &Value, _now: Timestamp) -> Vec<Value> {
    let (names, images) = containers_cells(get(o, &["template", "spec"]));
    vec![
        json!(name(o)),
        json!(names),
        json!(images),
        json!(format_labels(get(o, &["template", "metadata", "labels"]))),
    ]
}

// ---------------------------------------------------------------- workloads

fn replicas(o: &Value) -> i64 {
    oi(o, &["spec", "replicas"]).unwrap_or(1)
}

fn replication_controller(o: &Value, now: Timestamp) -> Vec<Value> {
    let (names, images) = containers_cells(get(o, &["spec", "template", "spec"]));
    vec![
        json!(name(o)),
        json!(replicas(o)),
        json!(i(o, &["status", "replicas"])),
        json!(i(o, &["status", "readyReplicas"])),
        json!(age(o, now)),
        json!(names),
        json!(images),
        json!(format_labels(get(o, &["spec", "selector"]))),
    ]
}

fn replica_set(o: &Value, now: Timestamp) -> Vec<Value> {
    let (names, images) = containers_cells(get(o, &["spec", "template", "spec"]));
    vec![
        json!(name(o)),
        json!(replicas(o)),
        json!(i(o, &["status", "replicas"])),
        json!(i(o, &["status", "readyReplicas"])),
        json!(age(o, now)),
        json!(names),
        json!(images),
        json!(format_label_selector(get(o, &["spec", "selector"]))),
    ]
}

fn deployment(o: &Value, now: Timestamp) -> Vec<Value> {
    let (names, images) = containers_cells(get(o, &["spec", "template", "spec"]));
    let selector =
        selector_string(get(o, &["spec", "selector"])).unwrap_or_else(|| "<invalid>".into());
    vec![
        json!(name(o)),
        json!(format!(
            "{}/{}",
            i(o, &["status", "readyReplicas"]),
            replicas(o)
        )),
        json!(i(o, &["status", "updatedReplicas"])),
        json!(i(o, &["status", "availableReplicas"])),
        json!(age(o, now)),
        json!(names),
        json!(images),
        json!(selector),
    ]
}

fn stateful_set(o: &Value, now: Timestamp) -> Vec<Value> {
    let (names, images) = containers_cells(get(o, &["spec", "template", "spec"]));
    vec![
        json!(name(o)),
        json!(format!(
            "{}/{}",
            i(o, &["status", "readyReplicas"]),
            replicas(o)
        )),
        json!(age(o, now)),
        json!(names),
        json!(images),
    ]
}

fn daemon_set(o: &Value, now: Timestamp) -> Vec<Value> {
    let (names, images) = containers_cells(get(o, &["spec", "template", "spec"]));
    vec![
        json!(name(o)),
        json!(i(o, &["status", "desiredNumberScheduled"])),
        json!(i(o, &["status", "currentNumberScheduled"])),
        json!(i(o, &["status", "numberReady"])),
        json!(i(o, &["status", "updatedNumberScheduled"])),
        json!(i(o, &["status", "numberAvailable"])),
        json!(format_labels(get(
            o,
            &["spec", "template", "spec", "nodeSelector"]
        ))),
        json!(age(o, now)),
        json!(names),
        json!(images),
        json!(format_label_selector(get(o, &["spec", "selector"]))),
    ]
}

fn controller_revision(o: &Value, now: Timestamp) -> Vec<Value> {
    let owner = arr(o, &["metadata", "ownerReferences"])
        .iter()
        .find(|r| ob(r, &["controller"]) == Some(true));
    let controller = match owner {
        None => "<none>".to_string(),
        Some(r) => {
            let api_version = s(r, &["apiVersion"]);
            let group = match api_version.split_once('/') {
                Some((g, _)) => g,
                None => "",
            };
            let kind = s(r, &["kind"]);
            let gk = if group.is_empty() {
                kind.to_string()
            } else {
                format!("{kind}.{group}")
            };
            if gk.is_empty() {
                s(r, &["name"]).to_string()
            } else {
                format!("{}/{}", gk.to_lowercase(), s(r, &["name"]))
            }
        }
    };
    vec![
        json!(name(o)),
        json!(controller),
        json!(i(o, &["revision"])),
        json!(age(o, now)),
    ]
}

fn job(o: &Value, now: Timestamp) -> Vec<Value> {
    let succeeded = i(o, &["status", "succeeded"]);
    let completions = match oi(o, &["spec", "completions"]) {
        Some(c) => format!("{succeeded}/{c}"),
        None => {
            let parallelism = oi(o, &["spec", "parallelism"]).unwrap_or(0);
            if parallelism > 1 {
                format!("{succeeded}/1 of {parallelism}")
            } else {
                format!("{succeeded}/1")
            }
        }
    };
    let start = parse_ts(get(o, &["status", "startTime"]));
    let end = parse_ts(get(o, &["status", "completionTime"]));
    let duration = match (start, end) {
        (None, _) => String::new(),
        (Some(st), None) => human_seconds(now.duration_since(st).as_secs()),
        (Some(st), Some(en)) => human_seconds(en.duration_since(st).as_secs()),
    };
    let status = if has_condition(o, "Complete") {
        "Complete"
    } else if has_condition(o, "Failed") {
        "Failed"
    } else if get(o, &["metadata", "deletionTimestamp"]).is_some() {
        "Terminating"
    } else if has_condition(o, "Suspended") {
        "Suspended"
    } else if has_condition(o, "FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    };
    let (names, images) = containers_cells(get(o, &["spec", "template", "spec"]));
    vec![
        json!(name(o)),
        json!(status),
        json!(completions),
        json!(duration),
        json!(age(o, now)),
        json!(names),
        json!(images),
        json!(format_label_selector(get(o, &["spec", "selector"]))),
    ]
}

fn cron_job(o: &Value, now: Timestamp) -> Vec<Value> {
    let last = if get(o, &["status", "lastScheduleTime"]).is_some() {
        since(get(o, &["status", "lastScheduleTime"]), now)
    } else {
        "<none>".to_string()
    };
    let tz = os(o, &["spec", "timeZone"]).unwrap_or("<none>");
    let (names, images) =
        containers_cells(get(o, &["spec", "jobTemplate", "spec", "template", "spec"]));
    vec![
        json!(name(o)),
        json!(s(o, &["spec", "schedule"])),
        json!(tz),
        json!(bool_ptr(ob(o, &["spec", "suspend"]))),
        json!(len_at(o, &["status", "active"])),
        json!(last),
        json!(age(o, now)),
        json!(names),
        json!(images),
        json!(format_label_selector(get(
            o,
            &["spec", "jobTemplate", "spec", "selector"]
        ))),
    ]
}

// ---------------------------------------------------------------- networking

/// Unique, sorted IPs (or hostnames) of load-balancer ingress points.
fn lb_ingress(o: &Value) -> Vec<String> {
    let mut out: Vec<String> = arr(o, &["status", "loadBalancer", "ingress"])
        .iter()
        .filter_map(|x| {
            let ip = s(x, &["ip"]);
            let host = s(x, &["hostname"]);
            if !ip.is_empty() {
                Some(ip.to_string())
            } else if !host.is_empty() {
                Some(host.to_string())
            } else {
                None
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn service(o: &Value, now: Timestamp) -> Vec<Value> {
    let svc_type = os(o, &["spec", "type"]).unwrap_or("ClusterIP");
    let cluster_ip = arr(o, &["spec", "clusterIPs"])
        .first()
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            os(o, &["spec", "clusterIP"])
                .filter(|x| !x.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "<none>".to_string());
    let external_ips: Vec<String> = arr(o, &["spec", "externalIPs"])
        .iter()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect();
    let external = match svc_type {
        "ClusterIP" | "NodePort" => {
            if external_ips.is_empty() {
                "<none>".to_string()
            } else {
                external_ips.join(",")
            }
        }
        "LoadBalancer" => {
            let mut all = lb_ingress(o);
            if !external_ips.is_empty() {
                all.extend(external_ips);
                all.join(",")
            } else if all.is_empty() {
                "<pending>".to_string()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => s(o, &["spec", "externalName"]).to_string(),
        _ => "<unknown>".to_string(),
    };
    let ports: Vec<String> = arr(o, &["spec", "ports"])
        .iter()
        .map(|p| {
            let port = i(p, &["port"]);
            let proto = os(p, &["protocol"]).unwrap_or("TCP");
            let node_port = i(p, &["nodePort"]);
            if node_port > 0 {
                format!("{port}:{node_port}/{proto}")
            } else {
                format!("{port}/{proto}")
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    };
    vec![
        json!(name(o)),
        json!(svc_type),
        json!(cluster_ip),
        json!(external),
        json!(ports),
        json!(age(o, now)),
        json!(format_labels(get(o, &["spec", "selector"]))),
    ]
}

fn ingress(o: &Value, now: Timestamp) -> Vec<Value> {
    let class = os(o, &["spec", "ingressClassName"]).unwrap_or("<none>");
    let rules = arr(o, &["spec", "rules"]);
    let max = 3;
    let mut hosts: Vec<&str> = Vec::new();
    let mut more = false;
    for r in rules {
        if hosts.len() == max {
            more = true;
        }
        let h = s(r, &["host"]);
        if !more && !h.is_empty() {
            hosts.push(h);
        }
    }
    let hosts = if hosts.is_empty() {
        "*".to_string()
    } else if more {
        format!("{} + {} more...", hosts.join(","), rules.len() - max)
    } else {
        hosts.join(",")
    };
    let ports = if arr(o, &["spec", "tls"]).is_empty() {
        "80"
    } else {
        "80, 443"
    };
    vec![
        json!(name(o)),
        json!(class),
        json!(hosts),
        json!(lb_ingress(o).join(",")),
        json!(ports),
        json!(age(o, now)),
    ]
}

fn ingress_class(o: &Value, now: Timestamp) -> Vec<Value> {
    let params = match get(o, &["spec", "parameters"]) {
        None => "<none>".to_string(),
        Some(p) => {
            let mut t = s(p, &["kind"]).to_string();
            if let Some(g) = os(p, &["apiGroup"]) {
                t = format!("{t}.{g}");
            }
            format!("{t}/{}", s(p, &["name"]))
        }
    };
    vec![
        json!(name(o)),
        json!(s(o, &["spec", "controller"])),
        json!(params),
        json!(age(o, now)),
    ]
}

fn network_policy(o: &Value, now: Timestamp) -> Vec<Value> {
    let sel = get(o, &["spec", "podSelector"])
        .cloned()
        .unwrap_or_else(|| json!({}));
    vec![
        json!(name(o)),
        json!(format_label_selector(Some(&sel))),
        json!(age(o, now)),
    ]
}

fn service_cidr(o: &Value, now: Timestamp) -> Vec<Value> {
    let cidrs: Vec<&str> = arr(o, &["spec", "cidrs"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    vec![json!(name(o)), json!(cidrs.join(",")), json!(age(o, now))]
}

fn ip_address(o: &Value, _now: Timestamp) -> Vec<Value> {
    let parent = match get(o, &["spec", "parentRef"]) {
        None => "<none>".to_string(),
        Some(p) => {
            let group = s(p, &["group"]);
            let resource = s(p, &["resource"]);
            let gr = if group.is_empty() {
                resource.to_string()
            } else {
                format!("{resource}.{group}")
            };
            let mut t = gr.to_lowercase();
            let ns = s(p, &["namespace"]);
            if !ns.is_empty() {
                t = format!("{t}/{ns}");
            }
            format!("{t}/{}", s(p, &["name"]))
        }
    };
    vec![json!(name(o)), json!(parent)]
}

fn endpoints(o: &Value, now: Timestamp) -> Vec<Value> {
    let subsets = arr(o, &["subsets"]);
    let text = if subsets.is_empty() {
        "<none>".to_string()
    } else {
        let max = 3;
        let mut list: Vec<String> = Vec::new();
        let mut more = false;
        let mut count = 0usize;
        for ss in subsets {
            let addrs = arr(ss, &["addresses"]);
            let ports = arr(ss, &["ports"]);
            if ports.is_empty() {
                count += addrs.len();
                for a in addrs {
                    if list.len() == max {
                        more = true;
                        break;
                    }
                    list.push(s(a, &["ip"]).to_string());
                }
                continue;
            }
            for p in ports {
                count += addrs.len();
                for a in addrs {
                    if list.len() == max {
                        more = true;
                        break;
                    }
                    list.push(join_host_port(s(a, &["ip"]), i(p, &["port"])));
                }
            }
        }
        if more {
            format!("{} + {} more...", list.join(","), count - max)
        } else {
            list.join(",")
        }
    };
    vec![json!(name(o)), json!(text), json!(age(o, now))]
}

fn endpoint_slice(o: &Value, now: Timestamp) -> Vec<Value> {
    let ports: Vec<String> = arr(o, &["ports"])
        .iter()
        .map(|p| match (oi(p, &["port"]), os(p, &["name"])) {
            (Some(n), _) => n.to_string(),
            (None, Some(nm)) => nm.to_string(),
            (None, None) => "*".to_string(),
        })
        .collect();
    let addrs: Vec<String> = arr(o, &["endpoints"])
        .iter()
        .flat_map(|e| arr(e, &["addresses"]).iter())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    vec![
        json!(name(o)),
        json!(s(o, &["addressType"])),
        json!(list_with_more(&ports, 3)),
        json!(list_with_more(&addrs, 3)),
        json!(age(o, now)),
    ]
}

// ---------------------------------------------------------------- cluster

fn node(o: &Value, now: Timestamp) -> Vec<Value> {
    let mut status: Vec<String> = Vec::new();
    // the last condition of a given type wins, as in a map keyed by type
    if let Some(c) = arr(o, &["status", "conditions"])
        .iter()
        .rev()
        .find(|c| s(c, &["type"]) == "Ready")
    {
        if s(c, &["status"]) == "True" {
            status.push("Ready".into());
        } else {
            status.push("NotReady".into());
        }
    }
    if status.is_empty() {
        status.push("Unknown".into());
    }
    if ob(o, &["spec", "unschedulable"]) == Some(true) {
        status.push("SchedulingDisabled".into());
    }
    let mut roles: Vec<String> = Vec::new();
    if let Some(labels) = get(o, &["metadata", "labels"]).and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.push(role.to_string());
                }
            } else if k == "kubernetes.io/role" {
                if let Some(v) = v.as_str().filter(|v| !v.is_empty()) {
                    roles.push(v.to_string());
                }
            }
        }
    }
    roles.sort();
    roles.dedup();
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.join(",")
    };
    let address = |t: &str| -> String {
        arr(o, &["status", "addresses"])
            .iter()
            .find(|a| s(a, &["type"]) == t)
            .map(|a| s(a, &["address"]).to_string())
            .unwrap_or_else(|| "<none>".to_string())
    };
    let info = |k: &str| -> String {
        let v = s(o, &["status", "nodeInfo", k]);
        if v.is_empty() {
            "<unknown>".to_string()
        } else {
            v.to_string()
        }
    };
    vec![
        json!(name(o)),
        json!(status.join(",")),
        json!(roles),
        json!(age(o, now)),
        json!(s(o, &["status", "nodeInfo", "kubeletVersion"])),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

/// First present value among several field names (core vs events.k8s.io).
fn first<'a>(o: &'a Value, paths: &[&[&str]]) -> Option<&'a Value> {
    paths.iter().find_map(|p| get(o, p))
}

fn event(o: &Value, now: Timestamp) -> Vec<Value> {
    let first_ts = first(o, &[&["firstTimestamp"], &["deprecatedFirstTimestamp"]]);
    let first_seen = if parse_ts(first_ts).is_some() {
        since(first_ts, now)
    } else {
        since(get(o, &["eventTime"]), now)
    };
    let last_ts = first(o, &[&["lastTimestamp"], &["deprecatedLastTimestamp"]]);
    let mut last_seen = if parse_ts(last_ts).is_some() {
        since(last_ts, now)
    } else {
        first_seen.clone()
    };
    let mut count = first(o, &[&["count"], &["deprecatedCount"]])
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if let Some(series) = get(o, &["series"]) {
        last_seen = since(get(series, &["lastObservedTime"]), now);
        count = i(series, &["count"]);
    } else if count == 0 {
        count = 1;
    }
    let regarding = first(o, &[&["involvedObject"], &["regarding"]]);
    let (kind, obj_name, field_path) = match regarding {
        Some(r) => (s(r, &["kind"]), s(r, &["name"]), s(r, &["fieldPath"])),
        None => ("", "", ""),
    };
    let target = if obj_name.is_empty() {
        kind.to_lowercase()
    } else {
        format!("{}/{obj_name}", kind.to_lowercase())
    };
    let source = first(o, &[&["source"], &["deprecatedSource"]]);
    let component = source.map(|x| s(x, &["component"])).unwrap_or("");
    let host = source.map(|x| s(x, &["host"])).unwrap_or("");
    let reporting_controller = first(o, &[&["reportingComponent"], &["reportingController"]])
        .and_then(Value::as_str)
        .unwrap_or("");
    let component = if component.is_empty() {
        reporting_controller
    } else {
        component
    };
    let instance = if host.is_empty() {
        s(o, &["reportingInstance"])
    } else {
        host
    };
    let source = if instance.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {instance}")
    };
    let message = first(o, &[&["message"], &["note"]])
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim();
    vec![
        json!(last_seen),
        json!(s(o, &["type"])),
        json!(s(o, &["reason"])),
        json!(target),
        json!(field_path),
        json!(source),
        json!(message),
        json!(first_seen),
        json!(count),
        json!(name(o)),
    ]
}

fn namespace(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        json!(name(o)),
        json!(s(o, &["status", "phase"])),
        json!(age(o, now)),
    ]
}

fn secret(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        json!(name(o)),
        json!(s(o, &["type"])),
        json!(len_at(o, &["data"])),
        json!(age(o, now)),
    ]
}

fn service_account(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        json!(name(o)),
        json!(len_at(o, &["secrets"])),
        json!(age(o, now)),
    ]
}

fn config_map(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        json!(name(o)),
        json!(len_at(o, &["data"]) + len_at(o, &["binaryData"])),
        json!(age(o, now)),
    ]
}

fn access_modes(modes: &[Value]) -> String {
    let has = |m: &str| modes.iter().any(|x| x.as_str() == Some(m));
    let mut out = Vec::new();
    for (mode, short) in [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ] {
        if has(mode) {
            out.push(short);
        }
    }
    out.join(",")
}

const BETA_STORAGE_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";

fn persistent_volume(o: &Value, now: Timestamp) -> Vec<Value> {
    let claim = match get(o, &["spec", "claimRef"]) {
        Some(c) => format!("{}/{}", s(c, &["namespace"]), s(c, &["name"])),
        None => String::new(),
    };
    let mut phase = s(o, &["status", "phase"]).to_string();
    if get(o, &["metadata", "deletionTimestamp"]).is_some() {
        phase = "Terminating".into();
    }
    let class = os(
        o,
        &["metadata", "annotations", BETA_STORAGE_CLASS_ANNOTATION],
    )
    .unwrap_or_else(|| s(o, &["spec", "storageClassName"]));
    vec![
        json!(name(o)),
        json!(quantity(get(o, &["spec", "capacity", "storage"])).unwrap_or_else(|| "0".into())),
        json!(access_modes(arr(o, &["spec", "accessModes"]))),
        json!(s(o, &["spec", "persistentVolumeReclaimPolicy"])),
        json!(phase),
        json!(claim),
        json!(class),
        json!(os(o, &["spec", "volumeAttributesClassName"]).unwrap_or("<unset>")),
        json!(s(o, &["status", "reason"])),
        json!(age(o, now)),
        json!(os(o, &["spec", "volumeMode"]).unwrap_or("<unset>")),
    ]
}

fn persistent_volume_claim(o: &Value, now: Timestamp) -> Vec<Value> {
    let mut phase = s(o, &["status", "phase"]).to_string();
    if get(o, &["metadata", "deletionTimestamp"]).is_some() {
        phase = "Terminating".into();
    }
    let volume = s(o, &["spec", "volumeName"]);
    let (capacity, modes) = if volume.is_empty() {
        (String::new(), String::new())
    } else {
        (
            quantity(get(o, &["status", "capacity", "storage"])).unwrap_or_else(|| "0".into()),
            access_modes(arr(o, &["status", "accessModes"])),
        )
    };
    let class = os(
        o,
        &["metadata", "annotations", BETA_STORAGE_CLASS_ANNOTATION],
    )
    .unwrap_or_else(|| s(o, &["spec", "storageClassName"]));
    vec![
        json!(name(o)),
        json!(phase),
        json!(volume),
        json!(capacity),
        json!(modes),
        json!(class),
        json!(os(o, &["spec", "volumeAttributesClassName"]).unwrap_or("<unset>")),
        json!(age(o, now)),
        json!(os(o, &["spec", "volumeMode"]).unwrap_or("<unset>")),
    ]
}

fn component_status(o: &Value, _now: Timestamp) -> Vec<Value> {
    let mut status = "Unknown";
    let mut message = "";
    let mut error = "";
    if let Some(c) = arr(o, &["conditions"])
        .iter()
        .find(|c| s(c, &["type"]) == "Healthy")
    {
        status = if s(c, &["status"]) == "True" {
            "Healthy"
        } else {
            "Unhealthy"
        };
        message = s(c, &["message"]);
        error = s(c, &["error"]);
    }
    vec![json!(name(o)), json!(status), json!(message), json!(error)]
}

/// An APIService row as the aggregator prints it: `Local` or `namespace/name` of the
/// backing service; the `Available` condition's status, with its reason when not True.
fn api_service(o: &Value, now: Timestamp) -> Vec<Value> {
    let service = match get(o, &["spec", "service"]).filter(|v| v.is_object()) {
        Some(svc) => format!("{}/{}", s(svc, &["namespace"]), s(svc, &["name"])),
        None => "Local".to_string(),
    };
    let available = match arr(o, &["status", "conditions"])
        .iter()
        .find(|c| s(c, &["type"]) == "Available")
    {
        None => "Unknown".to_string(),
        Some(c) if s(c, &["status"]) == "True" => "True".to_string(),
        Some(c) => format!("{} ({})", s(c, &["status"]), s(c, &["reason"])),
    };
    vec![
        json!(name(o)),
        json!(service),
        json!(available),
        json!(age(o, now)),
    ]
}

fn resource_quota(o: &Value, now: Timestamp) -> Vec<Value> {
    let mut names: Vec<&String> = match get(o, &["status", "hard"]).and_then(Value::as_object) {
        Some(m) => m.keys().collect(),
        None => Vec::new(),
    };
    names.sort();
    let mut requests = Vec::new();
    let mut limits = Vec::new();
    for r in names {
        let used = quantity(get(o, &["status", "used", r])).unwrap_or_else(|| "0".into());
        let hard = quantity(get(o, &["status", "hard", r])).unwrap_or_else(|| "0".into());
        let text = format!("{r}: {used}/{hard}");
        let mut pieces = r.split('.');
        let is_limit = pieces.next() == Some("limits") && pieces.next().is_some();
        if is_limit {
            limits.push(text);
        } else {
            requests.push(text);
        }
    }
    vec![
        json!(name(o)),
        json!(requests.join(", ")),
        json!(limits.join(", ")),
        json!(age(o, now)),
    ]
}

fn hpa_metrics(o: &Value) -> String {
    let specs = arr(o, &["spec", "metrics"]);
    let statuses = arr(o, &["status", "currentMetrics"]);
    if specs.is_empty() {
        // autoscaling/v1 shape
        if let Some(target) = oi(o, &["spec", "targetCPUUtilizationPercentage"]) {
            let cur = oi(o, &["status", "currentCPUUtilizationPercentage"])
                .map(|c| format!("{c}%"))
                .unwrap_or_else(|| "<unknown>".into());
            return format!("cpu: {cur}/{target}%");
        }
        return "<none>".to_string();
    }
    let qs = |v: Option<&Value>| quantity(v).unwrap_or_else(|| "<nil>".into());
    let unknown = || "<unknown>".to_string();
    let mut list: Vec<String> = Vec::new();
    for (idx, spec) in specs.iter().enumerate() {
        let st = statuses.get(idx);
        let text = match s(spec, &["type"]) {
            "External" | "Object" => {
                let key = if s(spec, &["type"]) == "External" {
                    "external"
                } else {
                    "object"
                };
                let status = st.and_then(|x| get(x, &[key]));
                if let Some(avg) = get(spec, &[key, "target", "averageValue"]) {
                    let cur = status
                        .and_then(|x| quantity(get(x, &["current", "averageValue"])))
                        .unwrap_or_else(unknown);
                    format!("{cur}/{} (avg)", qs(Some(avg)))
                } else {
                    let cur = status
                        .map(|x| qs(get(x, &["current", "value"])))
                        .unwrap_or_else(unknown);
                    format!("{cur}/{}", qs(get(spec, &[key, "target", "value"])))
                }
            }
            "Pods" => {
                let cur = st
                    .and_then(|x| get(x, &["pods"]))
                    .map(|x| qs(get(x, &["current", "averageValue"])))
                    .unwrap_or_else(unknown);
                format!(
                    "{cur}/{}",
                    qs(get(spec, &["pods", "target", "averageValue"]))
                )
            }
            "Resource" | "ContainerResource" => {
                let key = if s(spec, &["type"]) == "Resource" {
                    "resource"
                } else {
                    "containerResource"
                };
                let rname = s(spec, &[key, "name"]);
                let status = st.and_then(|x| get(x, &[key]));
                if let Some(avg) = get(spec, &[key, "target", "averageValue"]) {
                    let cur = status
                        .map(|x| qs(get(x, &["current", "averageValue"])))
                        .unwrap_or_else(unknown);
                    format!("{rname}: {cur}/{}", qs(Some(avg)))
                } else {
                    let cur = status
                        .and_then(|x| oi(x, &["current", "averageUtilization"]))
                        .map(|u| format!("{u}%"))
                        .unwrap_or_else(unknown);
                    let target = oi(spec, &[key, "target", "averageUtilization"])
                        .map(|u| format!("{u}%"))
                        .unwrap_or_else(|| "<auto>".into());
                    format!("{rname}: {cur}/{target}")
                }
            }
            _ => "<unknown type>".to_string(),
        };
        list.push(text);
    }
    let max = 2;
    if list.len() > max {
        let extra = list.len() - max;
        return format!("{} + {extra} more...", list[..max].join(", "));
    }
    list.join(", ")
}

fn hpa(o: &Value, now: Timestamp) -> Vec<Value> {
    let reference = format!(
        "{}/{}",
        s(o, &["spec", "scaleTargetRef", "kind"]),
        s(o, &["spec", "scaleTargetRef", "name"])
    );
    let min = oi(o, &["spec", "minReplicas"])
        .map(|m| m.to_string())
        .unwrap_or_else(|| "<unset>".into());
    vec![
        json!(name(o)),
        json!(reference),
        json!(hpa_metrics(o)),
        json!(min),
        json!(i(o, &["spec", "maxReplicas"])),
        json!(i(o, &["status", "currentReplicas"])),
        json!(age(o, now)),
    ]
}

fn scale(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        json!(name(o)),
        json!(i(o, &["spec", "replicas"])),
        json!(i(o, &["status", "replicas"])),
        json!(age(o, now)),
    ]
}

fn role_binding(o: &Value, now: Timestamp) -> Vec<Value> {
    let mut users = Vec::new();
    let mut groups = Vec::new();
    let mut sas = Vec::new();
    for sub in arr(o, &["subjects"]) {
        let n = s(sub, &["name"]);
        match s(sub, &["kind"]) {
            "User" => users.push(n.to_string()),
            "Group" => groups.push(n.to_string()),
            "ServiceAccount" => sas.push(format!("{}/{n}", s(sub, &["namespace"]))),
            _ => {}
        }
    }
    vec![
        json!(name(o)),
        json!(format!(
            "{}/{}",
            s(o, &["roleRef", "kind"]),
            s(o, &["roleRef", "name"])
        )),
        json!(age(o, now)),
        json!(users.join(", ")),
        json!(groups.join(", ")),
        json!(sas.join(", ")),
    ]
}

fn csr(o: &Value, now: Timestamp) -> Vec<Value> {
    let (mut approved, mut denied, mut failed) = (false, false, false);
    for c in arr(o, &["status", "conditions"]) {
        match s(c, &["type"]) {
            "Approved" => approved = true,
            "Denied" => denied = true,
            "Failed" => failed = true,
            _ => {}
        }
    }
    let mut status = if denied {
        "Denied".to_string()
    } else if approved {
        "Approved".to_string()
    } else {
        "Pending".to_string()
    };
    if failed {
        status.push_str(",Failed");
    }
    if !s(o, &["status", "certificate"]).is_empty() {
        status.push_str(",Issued");
    }
    let signer = os(o, &["spec", "signerName"])
        .filter(|x| !x.is_empty())
        .unwrap_or("<none>");
    let duration = oi(o, &["spec", "expirationSeconds"])
        .map(human_seconds)
        .unwrap_or_else(|| "<none>".into());
    vec![
        json!(name(o)),
        json!(age(o, now)),
        json!(signer),
        json!(s(o, &["spec", "username"])),
        json!(duration),
        json!(status),
    ]
}

fn cluster_trust_bundle(o: &Value, _now: Timestamp) -> Vec<Value> {
    let signer = os(o, &["spec", "signerName"])
        .filter(|x| !x.is_empty())
        .unwrap_or("<none>");
    vec![json!(name(o)), json!(signer)]
}

fn lease(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        json!(name(o)),
        json!(s(o, &["spec", "holderIdentity"])),
        json!(age(o, now)),
    ]
}

fn lease_candidate(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        json!(name(o)),
        json!(s(o, &["spec", "leaseName"])),
        json!(s(o, &["spec", "binaryVersion"])),
        json!(s(o, &["spec", "emulationVersion"])),
        json!(age(o, now)),
    ]
}

fn storage_class(o: &Value, now: Timestamp) -> Vec<Value> {
    let mut n = name(o);
    let ann = |k: &str| os(o, &["metadata", "annotations", k]) == Some("true");
    if ann("storageclass.kubernetes.io/is-default-class")
        || ann("storageclass.beta.kubernetes.io/is-default-class")
    {
        n.push_str(" (default)");
    }
    vec![
        json!(n),
        json!(s(o, &["provisioner"])),
        json!(os(o, &["reclaimPolicy"]).unwrap_or("Delete")),
        json!(os(o, &["volumeBindingMode"]).unwrap_or("Immediate")),
        json!(b_or(o, &["allowVolumeExpansion"], false)),
        json!(age(o, now)),
    ]
}

fn volume_attributes_class(o: &Value, now: Timestamp) -> Vec<Value> {
    let mut n = name(o);
    if os(
        o,
        &[
            "metadata",
            "annotations",
            "volumeattributesclass.alpha.kubernetes.io/is-default-class",
        ],
    ) == Some("true")
    {
        n.push_str(" (default)");
    }
    vec![json!(n), json!(s(o, &["driverName"])), json!(age(o, now))]
}

fn priority_class(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        json!(name(o)),
        json!(i(o, &["value"])),
        json!(b_or(o, &["globalDefault"], false)),
        json!(age(o, now)),
        json!(s(o, &["preemptionPolicy"])),
    ]
}

fn runtime_class(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        json!(name(o)),
        json!(s(o, &["handler"])),
        json!(age(o, now)),
    ]
}

fn volume_attachment(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        json!(name(o)),
        json!(s(o, &["spec", "attacher"])),
        json!(s(o, &["spec", "source", "persistentVolumeName"])),
        json!(s(o, &["spec", "nodeName"])),
        json!(b_or(o, &["status", "attached"], false)),
        json!(age(o, now)),
    ]
}

fn csi_node(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        json!(name(o)),
        json!(len_at(o, &["spec", "drivers"])),
        json!(age(o, now)),
    ]
}

fn csi_driver(o: &Value, now: Timestamp) -> Vec<Value> {
    let modes: Vec<&str> = arr(o, &["spec", "volumeLifecycleModes"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let modes = if modes.is_empty() {
        "<none>".to_string()
    } else {
        modes.join(",")
    };
    let tokens = match get(o, &["spec", "tokenRequests"]) {
        None => "<unset>".to_string(),
        Some(_) => arr(o, &["spec", "tokenRequests"])
            .iter()
            .map(|t| s(t, &["audience"]))
            .collect::<Vec<_>>()
            .join(","),
    };
    vec![
        json!(name(o)),
        json!(b_or(o, &["spec", "attachRequired"], true)),
        json!(b_or(o, &["spec", "podInfoOnMount"], false)),
        json!(b_or(o, &["spec", "storageCapacity"], false)),
        json!(tokens),
        json!(b_or(o, &["spec", "requiresRepublish"], false)),
        json!(modes),
        json!(age(o, now)),
    ]
}

fn csi_storage_capacity(o: &Value, _now: Timestamp) -> Vec<Value> {
    vec![
        json!(name(o)),
        json!(s(o, &["storageClassName"])),
        json!(quantity(get(o, &["capacity"])).unwrap_or_else(|| "<unset>".into())),
    ]
}

fn webhook_configuration(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        json!(name(o)),
        json!(len_at(o, &["webhooks"])),
        json!(age(o, now)),
    ]
}

fn param_kind(o: &Value) -> String {
    match get(o, &["spec", "paramKind"]) {
        Some(p) => format!("{}/{}", s(p, &["apiVersion"]), s(p, &["kind"])),
        None => "<unset>".to_string(),
    }
}

fn validating_admission_policy(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        json!(name(o)),
        json!(len_at(o, &["spec", "validations"])),
        json!(param_kind(o)),
        json!(age(o, now)),
    ]
}

fn mutating_admission_policy(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        json!(name(o)),
        json!(len_at(o, &["spec", "mutations"])),
        json!(param_kind(o)),
        json!(age(o, now)),
    ]
}

fn admission_policy_binding(o: &Value, now: Timestamp) -> Vec<Value> {
    let param = match get(o, &["spec", "paramRef"]) {
        None => "<unset>".to_string(),
        Some(pr) => {
            let n = s(pr, &["name"]);
            let ns = s(pr, &["namespace"]);
            if !n.is_empty() {
                if ns.is_empty() {
                    format!("*/{n}")
                } else {
                    format!("{ns}/{n}")
                }
            } else if let Some(sel) = get(pr, &["selector"]) {
                format_label_selector(Some(sel))
            } else {
                "<unset>".to_string()
            }
        }
    };
    vec![
        json!(name(o)),
        json!(s(o, &["spec", "policyName"])),
        json!(param),
        json!(age(o, now)),
    ]
}

fn flow_schema(o: &Value, now: Timestamp) -> Vec<Value> {
    let distinguisher = os(o, &["spec", "distinguisherMethod", "type"]).unwrap_or("<none>");
    let missing = arr(o, &["status", "conditions"])
        .iter()
        .find(|c| s(c, &["type"]) == "Dangling")
        .map(|c| s(c, &["status"]).to_string())
        .unwrap_or_else(|| "?".to_string());
    vec![
        json!(name(o)),
        json!(s(o, &["spec", "priorityLevelConfiguration", "name"])),
        json!(i(o, &["spec", "matchingPrecedence"])),
        json!(distinguisher),
        json!(age(o, now)),
        json!(missing),
    ]
}

fn priority_level(o: &Value, now: Timestamp) -> Vec<Value> {
    let none = || json!("<none>");
    let (mut ncs, mut queues, mut hand, mut qll) = (none(), none(), none(), none());
    if let Some(l) = get(o, &["spec", "limited"]) {
        ncs = json!(i(l, &["nominalConcurrencyShares"]));
        if let Some(q) = get(l, &["limitResponse", "queuing"]) {
            queues = json!(i(q, &["queues"]));
            hand = json!(i(q, &["handSize"]));
            qll = json!(i(q, &["queueLengthLimit"]));
        }
    }
    vec![
        json!(name(o)),
        json!(s(o, &["spec", "type"])),
        ncs,
        queues,
        hand,
        qll,
        json!(age(o, now)),
    ]
}

fn storage_version(o: &Value, now: Timestamp) -> Vec<Value> {
    let versions: Vec<String> = arr(o, &["status", "storageVersions"])
        .iter()
        .map(|v| format!("{}={}", s(v, &["apiServerID"]), s(v, &["encodingVersion"])))
        .collect();
    vec![
        json!(name(o)),
        json!(os(o, &["status", "commonEncodingVersion"]).unwrap_or("<unset>")),
        json!(list_with_more(&versions, 3)),
        json!(age(o, now)),
    ]
}

fn storage_version_migration(o: &Value, _now: Timestamp) -> Vec<Value> {
    let r = format!(
        "{}.{}.{}",
        s(o, &["spec", "resource", "resource"]),
        s(o, &["spec", "resource", "version"]),
        s(o, &["spec", "resource", "group"])
    );
    vec![json!(name(o)), json!(r)]
}

fn pdb(o: &Value, now: Timestamp) -> Vec<Value> {
    let int_or_string = |v: Option<&Value>| match v {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "N/A".to_string(),
    };
    vec![
        json!(name(o)),
        json!(int_or_string(get(o, &["spec", "minAvailable"]))),
        json!(int_or_string(get(o, &["spec", "maxUnavailable"]))),
        json!(i(o, &["status", "disruptionsAllowed"])),
        json!(age(o, now)),
    ]
}

fn name_age(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![json!(name(o)), json!(age(o, now))]
}

fn resource_claim(o: &Value, now: Timestamp) -> Vec<Value> {
    let deleted = get(o, &["metadata", "deletionTimestamp"]).is_some();
    let mut states = Vec::new();
    if deleted {
        states.push("deleted");
    }
    if get(o, &["status", "allocation"]).is_none() {
        if !deleted {
            states.push("pending");
        }
    } else {
        states.push("allocated");
        if !arr(o, &["status", "reservedFor"]).is_empty() {
            states.push("reserved");
        }
    }
    vec![json!(name(o)), json!(states.join(",")), json!(age(o, now))]
}

fn resource_slice(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        json!(name(o)),
        json!(s(o, &["spec", "nodeName"])),
        json!(s(o, &["spec", "driver"])),
        json!(s(o, &["spec", "pool", "name"])),
        json!(age(o, now)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2024-05-01T12:00:00Z".parse().unwrap()
    }

    fn row(group: &str, kind: &str, o: Value) -> Vec<Value> {
        let (cols, f) = lookup(group, kind).unwrap();
        let r = f(&o, now());
        assert_eq!(cols.len(), r.len());
        r
    }

    fn meta(n: &str) -> Value {
        json!({"name": n, "namespace": "default", "creationTimestamp": "2024-05-01T11:00:00Z"})
    }

    #[test]
    fn api_service_rows() {
        let local = json!({
            "metadata": meta("v1.apps"),
            "spec": {"group": "apps", "version": "v1"},
            "status": {"conditions": [{"type": "Available", "status": "True", "reason": "Local"}]}
        });
        assert_eq!(
            row("apiregistration.k8s.io", "APIService", local),
            vec![
                json!("v1.apps"),
                json!("Local"),
                json!("True"),
                json!("60m")
            ]
        );
        let remote = json!({
            "metadata": meta("v1beta1.metrics.k8s.io"),
            "spec": {"service": {"namespace": "kube-system", "name": "metrics-server"}},
            "status": {"conditions": [
                {"type": "Available", "status": "False", "reason": "MissingEndpoints"}
            ]}
        });
        assert_eq!(
            row("apiregistration.k8s.io", "APIService", remote),
            vec![
                json!("v1beta1.metrics.k8s.io"),
                json!("kube-system/metrics-server"),
                json!("False (MissingEndpoints)"),
                json!("60m")
            ]
        );
    }

    #[test]
    fn pod_running() {
        let p = json!({
            "metadata": meta("web"),
            "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {
                "phase": "Running", "podIP": "10.42.0.5", "podIPs": [{"ip": "10.42.0.5"}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [
                    {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                    {"name": "b", "ready": true, "restartCount": 0, "state": {"running": {}}}
                ]
            }
        });
        assert_eq!(
            row("", "Pod", p),
            vec![
                json!("web"),
                json!("2/2"),
                json!("Running"),
                json!("0"),
                json!("60m"),
                json!("10.42.0.5"),
                json!("n1"),
                json!("<none>"),
                json!("<none>")
            ]
        );
    }

    #[test]
    fn pod_pending_container_creating() {
        let p = json!({
            "metadata": meta("web"),
            "spec": {"containers": [{"name": "a"}]},
            "status": {
                "phase": "Pending",
                "containerStatuses": [
                    {"name": "a", "ready": false, "restartCount": 0,
                     "state": {"waiting": {"reason": "ContainerCreating"}}}
                ]
            }
        });
        let r = row("", "Pod", p);
        assert_eq!(r[1], "0/1");
        assert_eq!(r[2], "ContainerCreating");
        assert_eq!(r[5], "<none>");
        assert_eq!(r[6], "<none>");
    }

    #[test]
    fn pod_terminating_and_node_lost() {
        let mut p = json!({
            "metadata": meta("web"),
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}}]}
        });
        p["metadata"]["deletionTimestamp"] = json!("2024-05-01T11:59:00Z");
        assert_eq!(row("", "Pod", p.clone())[2], "Terminating");
        p["status"]["reason"] = json!("NodeLost");
        assert_eq!(row("", "Pod", p.clone())[2], "Unknown");
        p["status"]["reason"] = json!(null);
        p["status"]["phase"] = json!("Succeeded");
        p["status"]["containerStatuses"][0]["state"] =
            json!({"terminated": {"exitCode": 0, "reason": "Completed"}});
        assert_eq!(row("", "Pod", p)[2], "Completed");
    }

    #[test]
    fn pod_init_containers() {
        let base = json!({
            "metadata": meta("web"),
            "spec": {"initContainers": [{"name": "i1"}, {"name": "i2"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "i1", "restartCount": 0, "state": {"terminated": {"exitCode": 0}}},
                {"name": "i2", "restartCount": 0, "state": {"running": {}}}
            ], "containerStatuses": [
                {"name": "a", "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}
            ]}
        });
        let r = row("", "Pod", base.clone());
        assert_eq!(r[1], "0/1");
        assert_eq!(r[2], "Init:1/2");

        let mut failing = base.clone();
        failing["status"]["initContainerStatuses"][1]["state"] =
            json!({"waiting": {"reason": "CrashLoopBackOff"}});
        assert_eq!(row("", "Pod", failing)[2], "Init:CrashLoopBackOff");

        let mut errored = base.clone();
        errored["status"]["initContainerStatuses"][1]["state"] =
            json!({"terminated": {"exitCode": 2}});
        assert_eq!(row("", "Pod", errored)[2], "Init:ExitCode:2");

        // a started sidecar (restartPolicy Always) counts toward READY
        let sidecar = json!({
            "metadata": meta("web"),
            "spec": {"initContainers": [{"name": "s", "restartPolicy": "Always"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Initialized", "status": "True"}],
                "initContainerStatuses": [
                    {"name": "s", "started": true, "ready": true, "restartCount": 1,
                     "state": {"running": {}},
                     "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-05-01T11:55:00Z"}}}],
                "containerStatuses": [{"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}}]}
        });
        let r = row("", "Pod", sidecar);
        assert_eq!(r[1], "2/2");
        assert_eq!(r[2], "Running");
        assert_eq!(r[3], "1 (5m ago)");
    }

    #[test]
    fn pod_restarts_and_crashloop() {
        let p = json!({
            "metadata": meta("web"),
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": false, "restartCount": 5,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-05-01T11:57:00Z"}}}]}
        });
        let r = row("", "Pod", p);
        assert_eq!(r[1], "0/1");
        assert_eq!(r[2], "CrashLoopBackOff");
        assert_eq!(r[3], "5 (3m ago)");
    }

    #[test]
    fn pod_readiness_gates_and_wide_priority() {
        let (cols, _) = lookup("", "Pod").unwrap();
        let wide: Vec<&str> = cols
            .iter()
            .filter(|c| c.priority == 1)
            .map(|c| c.name)
            .collect();
        assert_eq!(
            wide,
            vec!["IP", "Node", "Nominated Node", "Readiness Gates"]
        );
        assert_eq!(cols[3].name, "Restarts");
        let p = json!({
            "metadata": meta("web"),
            "spec": {"containers": [], "readinessGates": [{"conditionType": "a"}, {"conditionType": "b"}]},
            "status": {"phase": "Running", "conditions": [{"type": "a", "status": "True"}, {"type": "b", "status": "False"}]}
        });
        assert_eq!(row("", "Pod", p)[8], "1/2");
    }

    #[test]
    fn deployment_row() {
        let d = json!({
            "metadata": meta("web"),
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.25"}, {"name": "side", "image": "busybox"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}
        });
        assert_eq!(
            row("apps", "Deployment", d),
            vec![
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("60m"),
                json!("nginx,side"),
                json!("nginx:1.25,busybox"),
                json!("app=web")
            ]
        );
        let empty = json!({"metadata": meta("x"), "spec": {"replicas": 1}});
        assert_eq!(row("apps", "Deployment", empty)[1], "0/1");
    }

    #[test]
    fn services() {
        let cluster_ip = json!({
            "metadata": meta("kubernetes"),
            "spec": {"type": "ClusterIP", "clusterIP": "10.43.0.1", "clusterIPs": ["10.43.0.1"],
                     "ports": [{"port": 443, "protocol": "TCP"}]}
        });
        let r = row("", "Service", cluster_ip);
        assert_eq!(
            &r[..5],
            &[
                json!("kubernetes"),
                json!("ClusterIP"),
                json!("10.43.0.1"),
                json!("<none>"),
                json!("443/TCP")
            ]
        );
        assert_eq!(r[6], "<none>");

        let node_port = json!({
            "metadata": meta("np"),
            "spec": {"type": "NodePort", "clusterIPs": ["10.43.1.2"], "selector": {"app": "web"},
                     "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "nodePort": 30053, "protocol": "UDP"}]}
        });
        let r = row("", "Service", node_port);
        assert_eq!(r[4], "80:30080/TCP,53:30053/UDP");
        assert_eq!(r[6], "app=web");

        let lb = json!({
            "metadata": meta("lb"),
            "spec": {"type": "LoadBalancer", "clusterIPs": ["10.43.1.3"], "ports": [{"port": 80, "nodePort": 31000, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.168.1.20"}, {"ip": "192.168.1.10"}, {"hostname": "lb.example.com"}]}}
        });
        assert_eq!(
            row("", "Service", lb)[3],
            "192.168.1.10,192.168.1.20,lb.example.com"
        );
        let pending = json!({"metadata": meta("lb"), "spec": {"type": "LoadBalancer", "clusterIPs": ["10.43.1.3"]}});
        let r = row("", "Service", pending);
        assert_eq!(r[3], "<pending>");
        assert_eq!(r[4], "<none>");

        let headless = json!({"metadata": meta("h"), "spec": {"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"]}});
        assert_eq!(row("", "Service", headless)[2], "None");
        let ext = json!({"metadata": meta("e"), "spec": {"type": "ExternalName", "externalName": "example.com"}});
        let r = row("", "Service", ext);
        assert_eq!(r[2], "<none>");
        assert_eq!(r[3], "example.com");
    }

    #[test]
    fn jobs() {
        let done = json!({
            "metadata": meta("pi"),
            "spec": {"completions": 1, "parallelism": 1, "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}},
                     "template": {"spec": {"containers": [{"name": "pi", "image": "perl"}]}}},
            "status": {"succeeded": 1, "startTime": "2024-05-01T11:00:00Z", "completionTime": "2024-05-01T11:00:45Z",
                       "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]}
        });
        let r = row("batch", "Job", done);
        assert_eq!(
            &r[..5],
            &[
                json!("pi"),
                json!("Complete"),
                json!("1/1"),
                json!("45s"),
                json!("60m")
            ]
        );
        assert_eq!(r[7], "batch.kubernetes.io/controller-uid=u");

        let running = json!({
            "metadata": meta("w"),
            "spec": {"parallelism": 3},
            "status": {"active": 3, "startTime": "2024-05-01T11:50:00Z"}
        });
        let r = row("batch", "Job", running);
        assert_eq!(r[1], "Running");
        assert_eq!(r[2], "0/1 of 3");
        assert_eq!(r[3], "10m");

        let failed = json!({"metadata": meta("f"), "spec": {"completions": 2},
            "status": {"conditions": [{"type": "Failed", "status": "True"}]}});
        let r = row("batch", "Job", failed);
        assert_eq!(r[1], "Failed");
        assert_eq!(r[2], "0/2");
        assert_eq!(r[3], "");
        let suspended = json!({"metadata": meta("s"), "status": {"conditions": [{"type": "Suspended", "status": "True"}]}});
        assert_eq!(row("batch", "Job", suspended)[1], "Suspended");
    }

    #[test]
    fn cronjobs() {
        let cj = json!({
            "metadata": meta("hello"),
            "spec": {"schedule": "*/5 * * * *", "suspend": false,
                     "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "h", "image": "busybox"}]}}}}},
            "status": {"active": [{"name": "hello-1"}], "lastScheduleTime": "2024-05-01T11:58:00Z"}
        });
        let r = row("batch", "CronJob", cj);
        assert_eq!(
            &r[..7],
            &[
                json!("hello"),
                json!("*/5 * * * *"),
                json!("<none>"),
                json!("False"),
                json!(1),
                json!("2m"),
                json!("60m")
            ]
        );
        assert_eq!(r[7], "h");
        assert_eq!(r[9], "<none>");
        let cj = json!({"metadata": meta("c"), "spec": {"schedule": "@daily", "timeZone": "Etc/UTC", "suspend": true}});
        let r = row("batch", "CronJob", cj);
        assert_eq!(r[2], "Etc/UTC");
        assert_eq!(r[3], "True");
        assert_eq!(r[4], 0);
        assert_eq!(r[5], "<none>");
    }

    #[test]
    fn nodes() {
        let n = json!({
            "metadata": {"name": "n1", "creationTimestamp": "2024-04-28T08:00:00Z",
                "labels": {"node-role.kubernetes.io/control-plane": "true", "node-role.kubernetes.io/master": "true", "kubernetes.io/role": "etcd", "other": "x"}},
            "spec": {"unschedulable": true},
            "status": {
                "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
                "addresses": [{"type": "InternalIP", "address": "192.168.1.5"}, {"type": "Hostname", "address": "n1"}],
                "nodeInfo": {"kubeletVersion": "v1.33.0+rk3s", "osImage": "Debian", "kernelVersion": "6.1", "containerRuntimeVersion": "containerd://1.7"}
            }
        });
        assert_eq!(
            row("", "Node", n),
            vec![
                json!("n1"),
                json!("Ready,SchedulingDisabled"),
                json!("control-plane,etcd,master"),
                json!("3d4h"),
                json!("v1.33.0+rk3s"),
                json!("192.168.1.5"),
                json!("<none>"),
                json!("Debian"),
                json!("6.1"),
                json!("containerd://1.7")
            ]
        );
        let bare = json!({"metadata": {"name": "n2"}});
        let r = row("", "Node", bare);
        assert_eq!(r[1], "Unknown");
        assert_eq!(r[2], "<none>");
        assert_eq!(r[3], "<unknown>");
        assert_eq!(r[7], "<unknown>");
        let not_ready = json!({"metadata": {"name": "n3"}, "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}});
        assert_eq!(row("", "Node", not_ready)[1], "NotReady");
    }

    #[test]
    fn simple_core_kinds() {
        let s = json!({"metadata": meta("tok"), "type": "Opaque", "data": {"a": "", "b": ""}});
        assert_eq!(
            row("", "Secret", s),
            vec![json!("tok"), json!("Opaque"), json!(2), json!("60m")]
        );
        let ns = json!({"metadata": meta("kube-system"), "status": {"phase": "Active"}});
        assert_eq!(row("", "Namespace", ns)[1], "Active");
        let sa = json!({"metadata": meta("default")});
        assert_eq!(row("", "ServiceAccount", sa)[1], 0);
        let l = json!({"metadata": meta("kube-scheduler"), "spec": {"holderIdentity": "n1_abc"}});
        assert_eq!(row("coordination.k8s.io", "Lease", l)[1], "n1_abc");
    }

    #[test]
    fn endpoints_and_slices() {
        let ep = json!({"metadata": meta("web"), "subsets": [
            {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"port": 80}, {"port": 443}]}
        ]});
        assert_eq!(
            row("", "Endpoints", ep)[1],
            "10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 1 more..."
        );
        let none = json!({"metadata": meta("web")});
        assert_eq!(row("", "Endpoints", none)[1], "<none>");
        let es = json!({"metadata": meta("web-abc"), "addressType": "IPv4",
            "ports": [{"port": 80, "name": "http"}, {"name": "x"}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}]});
        let r = row("discovery.k8s.io", "EndpointSlice", es);
        assert_eq!(
            &r[1..4],
            &[json!("IPv4"), json!("80,x"), json!("10.0.0.1,10.0.0.2")]
        );
        let empty = json!({"metadata": meta("e"), "addressType": "IPv4"});
        assert_eq!(
            row("discovery.k8s.io", "EndpointSlice", empty)[2],
            "<unset>"
        );
    }

    #[test]
    fn ingress_row() {
        let ing = json!({"metadata": meta("web"),
            "spec": {"ingressClassName": "traefik", "rules": [{"host": "a.example.com"}, {"host": "b.example.com"}], "tls": [{"hosts": ["a.example.com"]}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.168.1.5"}]}}});
        assert_eq!(
            row("networking.k8s.io", "Ingress", ing),
            vec![
                json!("web"),
                json!("traefik"),
                json!("a.example.com,b.example.com"),
                json!("192.168.1.5"),
                json!("80, 443"),
                json!("60m")
            ]
        );
        let bare = json!({"metadata": meta("x"), "spec": {"rules": [{}]}});
        let r = row("networking.k8s.io", "Ingress", bare);
        assert_eq!(
            &r[1..5],
            &[json!("<none>"), json!("*"), json!(""), json!("80")]
        );
    }

    #[test]
    fn events_core_and_events_api() {
        let ev = json!({"metadata": meta("web.17a"), "type": "Normal", "reason": "Scheduled",
            "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": "spec.containers{a}"},
            "source": {"component": "default-scheduler"}, "message": " Successfully assigned \n",
            "firstTimestamp": "2024-05-01T11:50:00Z", "lastTimestamp": "2024-05-01T11:55:00Z", "count": 3});
        assert_eq!(
            row("", "Event", ev),
            vec![
                json!("5m"),
                json!("Normal"),
                json!("Scheduled"),
                json!("pod/web"),
                json!("spec.containers{a}"),
                json!("default-scheduler"),
                json!("Successfully assigned"),
                json!("10m"),
                json!(3),
                json!("web.17a")
            ]
        );
        let ev = json!({"metadata": meta("x"), "type": "Warning", "reason": "BackOff",
            "regarding": {"kind": "Pod", "name": "p"}, "note": "back-off", "eventTime": "2024-05-01T11:59:00.000000Z",
            "reportingController": "kubelet", "reportingInstance": "n1"});
        let r = row("events.k8s.io", "Event", ev);
        assert_eq!(r[0], "60s");
        assert_eq!(r[3], "pod/p");
        assert_eq!(r[5], "kubelet, n1");
        assert_eq!(r[6], "back-off");
        assert_eq!(r[8], 1);
    }

    #[test]
    fn pv_and_pvc() {
        let pv = json!({"metadata": meta("pv1"),
            "spec": {"capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteMany", "ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "local-path",
                     "claimRef": {"namespace": "default", "name": "data"}, "volumeMode": "Filesystem"},
            "status": {"phase": "Bound"}});
        assert_eq!(
            row("", "PersistentVolume", pv),
            vec![
                json!("pv1"),
                json!("5Gi"),
                json!("RWO,RWX"),
                json!("Delete"),
                json!("Bound"),
                json!("default/data"),
                json!("local-path"),
                json!("<unset>"),
                json!(""),
                json!("60m"),
                json!("Filesystem")
            ]
        );
        let pvc = json!({"metadata": meta("data"),
            "spec": {"storageClassName": "local-path", "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Pending"}});
        let r = row("", "PersistentVolumeClaim", pvc);
        assert_eq!(
            &r[..6],
            &[
                json!("data"),
                json!("Pending"),
                json!(""),
                json!(""),
                json!(""),
                json!("local-path")
            ]
        );
        let bound = json!({"metadata": meta("data"),
            "spec": {"volumeName": "pv1", "storageClassName": "local-path"},
            "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"]}});
        let r = row("", "PersistentVolumeClaim", bound);
        assert_eq!(&r[2..5], &[json!("pv1"), json!("1Gi"), json!("RWO")]);
    }

    #[test]
    fn rbac_bindings_and_storage_class() {
        let rb = json!({"metadata": meta("rb"), "roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "Group", "name": "devs"},
                         {"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}, {"kind": "User", "name": "bob"}]});
        assert_eq!(
            row("rbac.authorization.k8s.io", "RoleBinding", rb),
            vec![
                json!("rb"),
                json!("ClusterRole/view"),
                json!("60m"),
                json!("alice, bob"),
                json!("devs"),
                json!("ns/sa")
            ]
        );
        let sc = json!({"metadata": {"name": "local-path", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"});
        assert_eq!(
            row("storage.k8s.io", "StorageClass", sc),
            vec![
                json!("local-path (default)"),
                json!("rancher.io/local-path"),
                json!("Delete"),
                json!("WaitForFirstConsumer"),
                json!(false),
                json!("<unknown>")
            ]
        );
    }

    #[test]
    fn workloads_misc() {
        let rs = json!({"metadata": meta("web-1"), "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"replicas": 2, "readyReplicas": 1}});
        assert_eq!(
            &row("apps", "ReplicaSet", rs)[..4],
            &[json!("web-1"), json!(2), json!(2), json!(1)]
        );
        let sts = json!({"metadata": meta("db"), "spec": {"replicas": 3}, "status": {"readyReplicas": 3}});
        assert_eq!(row("apps", "StatefulSet", sts)[1], "3/3");
        let ds = json!({"metadata": meta("svclb"), "spec": {"template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}}}},
            "status": {"desiredNumberScheduled": 1, "currentNumberScheduled": 1, "numberReady": 1, "updatedNumberScheduled": 1, "numberAvailable": 1}});
        assert_eq!(row("apps", "DaemonSet", ds)[6], "kubernetes.io/os=linux");
        let cr = json!({"metadata": {"name": "db-7d", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "controller": true}]}, "revision": 2});
        assert_eq!(
            &row("apps", "ControllerRevision", cr)[1..3],
            &[json!("statefulset.apps/db"), json!(2)]
        );
    }

    #[test]
    fn hpa_and_pdb_and_quota() {
        let h = json!({"metadata": meta("web"),
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 1, "maxReplicas": 10,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]},
            "status": {"currentReplicas": 2, "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 12}}}]}});
        assert_eq!(
            row("autoscaling", "HorizontalPodAutoscaler", h),
            vec![
                json!("web"),
                json!("Deployment/web"),
                json!("cpu: 12%/50%"),
                json!("1"),
                json!(10),
                json!(2),
                json!("60m")
            ]
        );
        let pdb = json!({"metadata": meta("p"), "spec": {"minAvailable": 1}, "status": {"disruptionsAllowed": 0}});
        assert_eq!(
            &row("policy", "PodDisruptionBudget", pdb)[1..4],
            &[json!("1"), json!("N/A"), json!(0)]
        );
        let q = json!({"metadata": meta("q"), "status": {
            "hard": {"pods": "10", "limits.cpu": "2", "requests.cpu": "1"},
            "used": {"pods": "3", "requests.cpu": "500m"}}});
        assert_eq!(
            &row("", "ResourceQuota", q)[1..3],
            &[
                json!("pods: 3/10, requests.cpu: 500m/1"),
                json!("limits.cpu: 0/2")
            ]
        );
    }
}
