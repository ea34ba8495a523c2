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
//! | [`BODY_IDLE_TIMEOUT_MS`] | 30 s | silence while reading a request body (uploads included) |
//! | [`WS_FIRST_MESSAGE_TIMEOUT_MS`] | 10 s | from WebSocket upgrade to the client's first message |
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

/// Longest silence while a request body is being read, in milliseconds; a slower client is
/// disconnected.
pub const BODY_IDLE_TIMEOUT_MS: u64 = 30_000;

/// Longest wait from a WebSocket upgrade to the client's first message, in milliseconds.
pub const WS_FIRST_MESSAGE_TIMEOUT_MS: u64 = 10_000;

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
