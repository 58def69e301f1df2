//! `faas doctor`: prints the host's capabilities. Exits 1 when sandboxes cannot run at all.

pub fn run() -> anyhow::Result<()> {
    let checks = faas_engine::doctor::run();
    let essential = ["root", "namespaces", "overlayfs", "cgroups", "seccomp", "pidfd + clone3"];
    let mut fatal = false;
    for c in &checks {
        let mark = if c.ok { "ok  " } else { "MISS" };
        println!("{mark} {:<16} {}", c.name, c.detail);
        if !c.ok {
            println!("     without it: {}", c.needed_for);
            fatal |= essential.contains(&c.name);
        }
    }
    if fatal {
        println!(
            "\nsandboxes cannot run on this host until the missing essentials above are fixed"
        );
        std::process::exit(1);
    }
    Ok(())
}
