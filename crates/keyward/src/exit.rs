//! The exit codes of the command line (a leaf: every command module uses them).

/// Exit codes: 0 success; 1 the server refused the request or the command failed; 2 bad usage;
/// 3 the server could not be reached; 4 the audit chain does not verify.
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;
pub const EXIT_CHAIN_BROKEN: u8 = 4;
