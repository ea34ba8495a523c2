//! Limits the agent enforces on what an authenticated client may ask of it.
//!
//! A client holding a valid certificate is trusted to run anything on the node, but not to make
//! the agent itself unresponsive: every request is bounded in size and in time, and every table
//! the agent keeps is bounded in entries, so one runner's bug (or a hostile test) cannot grow
//! the agent's memory without limit or hold its connections forever. A request over a limit is
//! refused with [`crate::ErrorKind::InvalidRequest`] naming the limit and its value.
//!
//! | limit | value | applies to |
//! |---|---|---|
//! | [`MAX_JSON_BODY`] | 1 MiB | every JSON request body |
//! | [`MAX_PROC_SPEC`] | 1 MiB | a [`crate::ProcSpec`] (POST body or exec WebSocket message) |
//! | [`MAX_PROC_ARGS`] | 65,536 | arguments plus environment entries of one spec |
//! | [`BODY_IDLE_TIMEOUT_MS`] | 30 s | waiting for a request body (uploads included) to deliver [`BODY_MIN_PROGRESS`] more bytes |
//! | [`BODY_MIN_PROGRESS`] | 16 KiB | bytes a request body must deliver per [`BODY_IDLE_TIMEOUT_MS`] of waiting (≈ 550 B/s) |
//! | [`WS_FIRST_MESSAGE_TIMEOUT_MS`] | 10 s | from the exec WebSocket upgrade to the process spec (pings do not count) |
//! | [`MAX_WS_MESSAGE`] | 1 MiB | one WebSocket message or frame from the client (exec and dial) |
//! | [`MAX_EXITED_PROCS`] | 1,024 | exited processes kept listed until their status is collected |
//! | [`MAX_EXITED_PROC_SPEC_BYTES`] | 16 MiB | specs of the exited processes kept listed, together |
//! | [`MAX_PROCS_LISTED`] | 4,096 | entries in one `GET /v1/procs` reply |
//! | [`MAX_PROCS_REPLY_BYTES`] | 16 MiB | bytes of one `GET /v1/procs` reply |
//! | [`MAX_BLOCKING_FILE_OPS`] | 64 | file operations running at once; more wait their turn |

/// Largest JSON request body, in bytes.
pub const MAX_JSON_BODY: usize = 1024 * 1024;

/// Largest process spec, in bytes of JSON: command, arguments and environment together.
pub const MAX_PROC_SPEC: usize = 1024 * 1024;

/// Most arguments plus environment entries in one process spec.
pub const MAX_PROC_ARGS: usize = 65_536;

/// Longest the agent waits, in milliseconds, for a request body (uploads included) to deliver
/// [`BODY_MIN_PROGRESS`] more bytes or end; a slower body is refused and its connection closed.
/// Only time spent waiting for the client counts. A minimum progress rather than an idle
/// timeout: a body trickled at one byte per 5 s is never silent for long, yet must not hold a
/// connection forever; a large upload on a slow link keeps going however long it takes.
pub const BODY_IDLE_TIMEOUT_MS: u64 = 30_000;

/// Bytes a request body must deliver per [`BODY_IDLE_TIMEOUT_MS`] the agent waits for it,
/// unless it ends first: about 550 bytes per second, far below any real link.
pub const BODY_MIN_PROGRESS: usize = 16 * 1024;

/// Longest wait from the exec WebSocket upgrade to the client's process spec, in
/// milliseconds. Pings do not extend it. (A dial tunnel has no such bound: it may rightly
/// stay silent.)
pub const WS_FIRST_MESSAGE_TIMEOUT_MS: u64 = 10_000;

/// Largest WebSocket message, and frame, a client may send on exec (the process spec, stdin
/// chunks) or dial (tunnelled bytes), in bytes. A larger frame is refused from its header, a
/// larger fragmented message as soon as its fragments pass the limit: neither is buffered.
/// At least [`MAX_PROC_SPEC`]; the runner sends chunks of 256 KiB.
pub const MAX_WS_MESSAGE: usize = 1024 * 1024;

/// Most exited processes the agent keeps listed before their exit status is collected; the
/// oldest collected ones go first, then the oldest uncollected ones.
pub const MAX_EXITED_PROCS: usize = 1024;

/// Most bytes of spec (see [`crate::ProcSpec::size`]) the exited processes kept listed may hold
/// together: with specs of up to [`MAX_PROC_SPEC`] each, a count alone would still let a
/// thousand exited processes hold a gigabyte. Pruned in the order of [`MAX_EXITED_PROCS`].
pub const MAX_EXITED_PROC_SPEC_BYTES: usize = 16 * 1024 * 1024;

/// Most entries in one `GET /v1/procs` reply (running processes first).
pub const MAX_PROCS_LISTED: usize = 4096;

/// Largest `GET /v1/procs` reply, in bytes; entries that would not fit are left out (running
/// processes first, as for [`MAX_PROCS_LISTED`]).
pub const MAX_PROCS_REPLY_BYTES: usize = 16 * 1024 * 1024;

/// Most file operations (open, read, write, list, remove) the agent runs at once.
pub const MAX_BLOCKING_FILE_OPS: usize = 64;
