//! threads_blocked run as an unprivileged user (meta: user = "nobody"):
//! restore gives every recreated thread the process's credentials with
//! calls injected into that thread (a raw setresuid changes only the
//! calling thread), so no thread stays root; each thread checks its
//! credentials against the leader's (zdtm-tests/src/threads.rs).

fn main() {
    zdtm_tests::threads::main()
}
