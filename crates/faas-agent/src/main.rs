//! `faas-agent`: PID 1 of long-lived sandboxes. Started by the sandbox's setup, never by
//! hand; it finds its control socket on descriptor 4.

fn main() {
    faas_agent::runtime::main()
}
