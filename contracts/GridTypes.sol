// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @notice Lifecycle of a job. Final statuses (FINISHED and after) never change.
enum JobStatus {
    NONE,
    PENDING,
    META_SCHEDULED,
    SCHEDULED,
    RUNNING,
    FINISHED,
    FAILED,
    OUT_OF_CREDITS,
    CANCELED,
    PANICKED
}

/// @notice Registration state of a provider.
enum ProviderStatus {
    NONE,
    PENDING,
    APPROVED,
    BANNED,
    REMOVED
}

/// @notice Why an assigned job went back to PENDING.
enum ReleaseReason {
    REFUSED,
    CLAIM_TIMEOUT
}

/// @notice What a provider reports for one job in a batched `report` call.
enum ReportAction {
    CLAIM,
    REFUSE,
    START,
    FINISH,
    OUT_OF_CREDITS,
    PANIC
}

/// @notice Operator of an on-chain label constraint. Ordering operators compare numeric words only.
enum LabelOp {
    EQ,
    NE,
    LT,
    LE,
    GT,
    GE
}

/// @notice What a job asks for. Resources are totals over all its tasks.
/// @param cpus CPU cores (>= 1)
/// @param gpus GPUs
/// @param memMB memory in MB (>= 1)
/// @param maxRate the most the owner pays, in credit units per minute (> 0)
/// @param credits escrow locked for the job, in credit units (> 0)
struct JobRequest {
    uint16 cpus;
    uint8 gpus;
    uint32 memMB;
    uint56 maxRate;
    uint64 credits;
}

/// @notice A job's requirement on a provider label: `label(key) op value`.
/// @dev `key` is keccak256 of the label name; values are 32-byte words: a number n < 2**240 is
///      encoded as 2**240 + n, a string as its UTF-8 bytes left-aligned; the zero word means absent.
struct LabelConstraint {
    bytes32 key;
    LabelOp op;
    bytes32 value;
}

/// @notice Hardware a provider offers (or has free).
struct Hardware {
    uint32 cpus;
    uint16 gpus;
    uint32 memMB;
}

/// @notice A provider's prices in credit units per minute.
struct Prices {
    uint40 perCpuMinute;
    uint40 perGpuMinute;
    uint40 perGbMinute;
}

/// @notice One entry of a provider's batched report.
/// @param exitCode the job's exit code, read for FINISH only (0 → FINISHED, other → FAILED)
struct Report {
    uint256 jobId;
    ReportAction action;
    int32 exitCode;
}

/// @notice An EIP-2612 permit signed by the payer for the market.
struct PermitSig {
    uint256 value;
    uint256 deadline;
    uint8 v;
    bytes32 r;
    bytes32 s;
}

/// @notice Read-only view of a job, as returned by `JobMarket.getJob`.
struct JobView {
    uint256 id;
    address owner;
    JobStatus status;
    address provider;
    uint64 escrow;
    uint56 rate;
    uint32 since;
    uint56 maxRate;
    uint16 cpus;
    uint8 gpus;
    uint32 memMB;
    bytes32 workflowHash;
    bytes32 labelsHash;
    uint256 headId; // first job of its array: the JobSubmitted event carrying the workflow is indexed by it
}

/// @notice Read-only view of a provider, as returned by `getProvider`.
struct ProviderView {
    address addr;
    uint32 id;
    ProviderStatus status;
    bool paused;
    Hardware total;
    Hardware free;
    Prices prices;
}
