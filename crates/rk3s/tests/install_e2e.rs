//! `rk3s install` as a service (issue 18), on a machine without systemd (as CI): the unit
//! file is written with k3s's settings, the server starts in the background, re-running the
//! install (the upgrade) restarts it on the same data, and the uninstall script leaves
//! nothing behind. Everything goes to folders of the test (binary, unit, config, data); the
//! pid and log files are `/run/<name>.pid` and `/var/log/<name>.log` with a unique name.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, kubectl_bin, wait_for};

/// What is in `dirs` (their entries) and which of `paths` exist.
fn listing(dirs: &[&Path], paths: &[&Path]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|rd| rd.flatten().map(|e| e.path()))
        .collect();
    out.extend(paths.iter().filter(|p| p.exists()).map(|p| p.to_path_buf()));
    out.sort();
    out
}

fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn install_upgrade_and_uninstall_without_systemd() {
    if Path::new("/run/systemd/system").is_dir() {
        eprintln!("SKIP: systemd runs here; this test covers the fallback start");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    let port = free_port();
    let name = format!("rk3s-test-{port}");
    let (bin, units, conf, data) = (
        t.join("bin"),
        t.join("systemd"),
        t.join("etc"),
        t.join("data"),
    );
    std::fs::create_dir_all(&conf).expect("conf dir");
    std::fs::write(conf.join("config.yaml"), "# test\n").expect("config");
    let kubeconfig = conf.join("rk3s.yaml");
    let exec = format!(
        "server --config {} --data-dir {} --disable-agent --https-listen-port {port} --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --write-kubeconfig {}",
        conf.join("config.yaml").display(),
        data.display(),
        kubeconfig.display()
    );
    let pid_file = PathBuf::from(format!("/run/{name}.pid"));
    let log_file = PathBuf::from(format!("/var/log/{name}.log"));
    let install = |from: &Path| {
        let o = Command::new(from)
            .arg("install")
            .env("INSTALL_RK3S_EXEC", &exec)
            .env("INSTALL_RK3S_NAME", &name)
            .env("INSTALL_RK3S_BIN_DIR", &bin)
            .env("INSTALL_RK3S_SYSTEMD_DIR", &units)
            .env("INSTALL_RK3S_CONFIG_DIR", &conf)
            .output()
            .expect("rk3s install");
        assert!(
            o.status.success(),
            "install: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let kubectl = |args: &[&str]| {
        Command::new(kubectl_bin())
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args)
            .output()
            .expect("kubectl")
    };
    let ready = || {
        let o = kubectl(&["get", "--raw", "/readyz"]);
        (o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "ok").then_some(())
    };
    let cleanup_guard = Guard {
        pid_file: pid_file.clone(),
        log_file: log_file.clone(),
    };

    install(Path::new(env!("CARGO_BIN_EXE_rk3s")));
    let unit = std::fs::read_to_string(units.join(format!("{name}.service"))).expect("unit");
    for line in [
        "Type=notify",
        "KillMode=process",
        "Delegate=yes",
        "Restart=always",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line}: {unit}");
    }
    assert!(unit.contains(&format!(
        "ExecStart={} server --config",
        bin.join("rk3s").display()
    )));
    assert!(bin.join("rk3s").is_file() && bin.join(format!("{name}-uninstall.sh")).is_file());
    wait_for("the installed server", Duration::from_secs(30), ready);
    let pid1 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .to_string();
    assert!(alive(&pid1));
    // The background server writes its own log (`--log`): start-up phases with durations.
    let log = std::fs::read_to_string(&log_file).expect("log file");
    for phase in [
        "phase=\"datastore\"",
        "phase=\"PKI\"",
        "phase=\"API server\"",
    ] {
        assert!(log.contains(phase), "{phase} in the log:\n{log}");
    }
    assert!(
        kubectl(&["create", "configmap", "kept", "--from-literal=a=b"])
            .status
            .success()
    );

    // The upgrade: install again (from the installed binary, as a new build would be);
    // the server restarts on the same data.
    let t0 = Instant::now();
    install(&bin.join("rk3s"));
    let pid2 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .to_string();
    assert_ne!(pid1, pid2, "restarted");
    assert!(!alive(&pid1), "the old server stopped");
    wait_for("the upgraded server", Duration::from_secs(30), ready);
    eprintln!("API back {:?} after the re-install began", t0.elapsed());
    let o = kubectl(&["get", "configmap", "kept", "-o", "jsonpath={.data.a}"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "b",
        "data kept across the upgrade"
    );

    // Uninstall: nothing of it is left.
    let o = Command::new("sh")
        .arg(bin.join(format!("{name}-uninstall.sh")))
        .output()
        .expect("uninstall");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_for("the server stopped", Duration::from_secs(30), || {
        (!alive(&pid2)).then_some(())
    });
    let left = listing(&[&bin, &units], &[&data, &conf, &pid_file, &log_file]);
    assert!(left.is_empty(), "left behind: {left:?}");
    drop(cleanup_guard);
}

/// Kills a server the test left running and removes its pid and log files.
struct Guard {
    pid_file: PathBuf,
    log_file: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
        let _ = std::fs::remove_file(&self.pid_file);
        let _ = std::fs::remove_file(&self.log_file);
    }
}
