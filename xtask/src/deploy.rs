//! `cargo xtask image` and `cargo xtask deploy-check`: the container image, a
//! cluster of its containers, and the Helm chart checked as far as one machine
//! without Kubernetes allows (Helm's engine, the API schemas, and what the
//! chart's pods run, started in network namespaces named after them).

use std::collections::BTreeMap;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

/// The image `cargo xtask image` tags.
pub const IMAGE: &str = "localhost/proglog";
/// Where the static build and the staged image context live.
const TARGET_DIR: &str = "target/image";
/// Python packages the chart check needs, pinned (checked to work here).
const PYTHON_PACKAGES: &[&str] = &["helm-python-sdk==0.2.2", "kubernetes-validate==1.37.0", "PyYAML==6.0.4"];
/// The agent's user in the image (and the chart's runAsUser).
const AGENT_UID: u32 = 65532;
/// podman as it works here: runc (crun fails on this machine's hybrid cgroups)
/// and explicit ulimits (podman's defaults exceed the hard limits).
const PODMAN: &[&str] = &["--runtime", "runc"];
const ULIMITS: &[&str] = &["--ulimit", "nofile=1024:20000", "--ulimit", "nproc=1024:20000"];

fn root_dir() -> Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask has no parent directory")?.to_owned())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A part this machine cannot run: a message, or a failure when
/// `PROGLOG_REQUIRE_ROOT_TESTS=1` (CI) says every part must run.
fn cannot_run(part: &str, reason: &str) -> Result<()> {
    if std::env::var("PROGLOG_REQUIRE_ROOT_TESTS").is_ok_and(|value| value == "1") {
        bail!("{part} cannot run here ({reason}), and PROGLOG_REQUIRE_ROOT_TESTS=1 says it must");
    }
    eprintln!("SKIPPED: {part}: {reason}");
    Ok(())
}

/// Installs Debian's `package` when `program` is missing (as root, through apt-get).
fn require(program: &str, package: &str) -> Result<()> {
    let found = || Command::new(program).arg("--version").output().is_ok();
    if found() {
        return Ok(());
    }
    ensure!(is_root(), "{program} is missing and only root can install it (apt-get install {package})");
    eprintln!("installing {package} (apt-get)");
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .context("running apt-get")?;
    ensure!(status.success() && found(), "apt-get install {package} failed: {status}");
    Ok(())
}

/// Runs `program args`, failing with its stderr; returns its stdout.
fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn podman(args: &[&str]) -> Result<String> {
    output("podman", &[PODMAN, args].concat())
}

/// Polls `done` until it answers true, or fails after `limit` naming `what`.
fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    let mut last_error = None;
    while start.elapsed() < limit {
        match done() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => last_error = Some(error),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    match last_error {
        Some(error) => Err(error.context(format!("timed out after {limit:?} waiting for {what}"))),
        None => bail!("timed out after {limit:?} waiting for {what}"),
    }
}

/// The statically linked binaries the image carries.
pub struct Binaries {
    pub agent: PathBuf,
    pub cli: PathBuf,
}

/// Builds the agent and the CLI with glibc linked statically (crt-static: the
/// toolchain here has no musl target, and glibc's allocator is faster than
/// musl's), stripped, and with whole-program LTO in one codegen unit: a quarter
/// smaller (agent 17.7 → 13.4 MB, CLI 7.3 → 5.5 MB at named logs), for a
/// minute more of build. Only the image's build: `cargo build --release` stays
/// quick for the quickstart.
fn build_static() -> Result<Binaries> {
    let root = root_dir()?;
    let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let status = Command::new("cargo")
        .current_dir(&root)
        .args(["build", "--release", "--locked", "--bin", "proglog-agent", "--bin", "proglog"])
        .args(["--target", &target, "--target-dir", TARGET_DIR])
        // With --target, RUSTFLAGS reach only the target's code, not build scripts.
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .env("CARGO_PROFILE_RELEASE_LTO", "fat")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .status()
        .context("running cargo build")?;
    ensure!(status.success(), "the static build failed: {status}");
    let dir = root.join(TARGET_DIR).join(&target).join("release");
    Ok(Binaries { agent: dir.join("proglog-agent"), cli: dir.join("proglog") })
}

/// `cargo xtask image`: builds the image and prints its size.
pub fn image() -> Result<Binaries> {
    let root = root_dir()?;
    require("buildah", "buildah")?;
    require("podman", "podman")?;
    require("runc", "runc")?;
    let binaries = build_static()?;
    let context = root.join(TARGET_DIR).join("context");
    if context.exists() {
        std::fs::remove_dir_all(&context)?;
    }
    std::fs::create_dir_all(&context)?;
    for binary in [&binaries.agent, &binaries.cli] {
        std::fs::copy(binary, context.join(binary.file_name().context("binary without a name")?))?;
    }
    output("cp", &["-a", &root.join("deploy/rootfs").display().to_string(), &context.display().to_string()])?;
    std::fs::remove_file(context.join("rootfs/data/.keep"))?;
    let version = env!("CARGO_PKG_VERSION");
    let (versioned, latest) = (format!("{IMAGE}:{version}"), format!("{IMAGE}:latest"));
    let containerfile = root.join("deploy/Containerfile").display().to_string();
    // Docker format: the OCI image format has no HEALTHCHECK.
    let status = Command::new("buildah")
        .args(["bud", "--quiet", "--format", "docker", "-f", &containerfile, "-t", &versioned, "-t", &latest])
        .arg(&context)
        .stdout(Stdio::null())
        .status()
        .context("running buildah")?;
    ensure!(status.success(), "buildah bud failed: {status}");
    let size: u64 = podman(&["image", "inspect", "--format", "{{.Size}}", &versioned])?.trim().parse()?;
    println!("built {versioned} (also {latest}): {:.1} MB", size as f64 / 1e6);
    ensure!(size < 25_000_000, "the image is {size} bytes; the goal is under 25 MB");
    Ok(binaries)
}

/// `cargo xtask deploy-check`.
pub fn check() -> Result<()> {
    let python = venv()?;
    let chart = root_dir()?.join("deploy/helm/proglog");
    let script = root_dir()?.join("deploy/check/chart.py");
    let status = Command::new(&python).arg(&script).arg("check").arg(&chart).status()?;
    ensure!(status.success(), "the chart check failed");
    if !is_root() {
        return cannot_run("the image, the container cluster and the chart's pods", "needs root");
    }
    let binaries = image()?;
    let work = root_dir()?.join("target/deploy-check");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    container_cluster(&binaries, &work.join("containers"))?;
    pods(&python, &chart, &script, &binaries, &work.join("pods"))?;
    println!("deploy-check passed");
    Ok(())
}

/// A venv under target/ with the chart check's packages; its python.
fn venv() -> Result<PathBuf> {
    let dir = root_dir()?.join("target/deploy-venv");
    let python = dir.join("bin/python");
    let stamp = dir.join("installed");
    if std::fs::read_to_string(&stamp).is_ok_and(|text| text == PYTHON_PACKAGES.join("\n")) {
        return Ok(python);
    }
    output("python3", &["-m", "venv", &dir.display().to_string()])?;
    let python_path = python.display().to_string();
    output(&python_path, &[&["-m", "pip", "install", "--quiet"], PYTHON_PACKAGES].concat())?;
    std::fs::write(&stamp, PYTHON_PACKAGES.join("\n"))?;
    Ok(python)
}

/// The CLI, run directly or inside a network namespace, with its TLS flags.
#[derive(Clone)]
struct Cli {
    prefix: Vec<String>,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Result<String> {
        let mut all: Vec<&str> = self.prefix.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        output("timeout", &[&["20"], &all[..]].concat())
    }

    /// `(id, rpc_addr, is_leader)` of each server, asked of `addr`.
    fn servers(&self, addr: &str) -> Result<Vec<(String, String, bool)>> {
        let text = self.run(&["--addr", addr, "--output", "json", "servers"])?;
        text.lines()
            .map(|line| {
                let server: Value = serde_json::from_str(line)?;
                Ok((
                    server["id"].as_str().unwrap_or_default().to_owned(),
                    server["rpc_addr"].as_str().unwrap_or_default().to_owned(),
                    server["is_leader"].as_bool().unwrap_or(false),
                ))
            })
            .collect()
    }

    /// The leader's rpc_addr as `addr` sees it, once it lists `members` servers.
    fn leader(&self, addr: &str, members: usize) -> Result<Option<String>> {
        let servers = self.servers(addr)?;
        let leader = servers.iter().find(|server| server.2).map(|server| server.1.clone());
        Ok(leader.filter(|_| servers.len() == members))
    }

    fn produce(&self, addr: &str, values: &[String]) -> Result<()> {
        let mut args = vec!["--addr", addr, "produce"];
        args.extend(values.iter().map(String::as_str));
        self.run(&args).map(drop)
    }

    /// Every value `addr` holds, from offset 0.
    fn consume(&self, addr: &str) -> Result<Vec<String>> {
        Ok(self.run(&["--addr", addr, "consume", "--offset", "0"])?.lines().map(str::to_owned).collect())
    }
}

/// Ports free on loopback for TCP and UDP alike.
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let mut held = Vec::new();
    while held.len() < count {
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if let Ok(udp) = UdpSocket::bind(("127.0.0.1", port)) {
            held.push((tcp, udp, port));
        }
    }
    Ok(held.into_iter().map(|(_, _, port)| port).collect())
}

/// Removes the containers it names, whatever happened.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = podman(&["rm", "--force", "--time", "0", name]);
        }
    }
}

/// Three containers of the image on loopback (host networking): they form by
/// gossip, serve the host's CLI, fail over when the leader is killed, catch the
/// killed one up when it starts again, and exit 0 on SIGTERM within the grace.
fn container_cluster(binaries: &Binaries, work: &Path) -> Result<()> {
    const NODES: usize = 3;
    const GRACE: u64 = 30;
    let cli = Cli { prefix: vec![binaries.cli.display().to_string()] };
    let ports = free_ports(NODES * 3)?;
    let names: Vec<String> = (0..NODES).map(|node| format!("proglog-check-{node}")).collect();
    let containers = Containers(names.clone());
    for name in &names {
        let _ = podman(&["rm", "--force", name]);
    }
    let rpc = |node: usize| format!("127.0.0.1:{}", ports[node * 3]);
    let cluster = format!("proglog://{}", (0..NODES).map(rpc).collect::<Vec<_>>().join(","));
    for (node, name) in names.iter().enumerate() {
        let data = work.join(name);
        std::fs::create_dir_all(&data)?;
        std::os::unix::fs::chown(&data, Some(AGENT_UID), Some(AGENT_UID))?;
        let [rpc_port, gossip, http] = [0, 1, 2].map(|i| ports[node * 3 + i]);
        let volume = format!("{}:/data", data.display());
        let health =
            format!("[\"/usr/local/bin/proglog\", \"servers\", \"--addr\", \"127.0.0.1:{rpc_port}\"]");
        let mut args = vec![
            "run".to_owned(),
            "--detach".into(),
            "--name".into(),
            name.clone(),
            "--network".into(),
            "host".into(),
            "--read-only".into(),
            "--stop-timeout".into(),
            GRACE.to_string(),
            "--volume".into(),
            volume,
            "--health-cmd".into(),
            health,
        ];
        args.extend(ULIMITS.iter().map(|arg| (*arg).to_owned()));
        args.push(format!("{IMAGE}:latest"));
        args.extend([
            "--data-dir=/data".to_owned(),
            format!("--node-name={name}"),
            format!("--bind-addr=127.0.0.1:{gossip}"),
            format!("--rpc-port={rpc_port}"),
            format!("--http-addr=127.0.0.1:{http}"),
            "--log-format=json".into(),
        ]);
        if node > 0 {
            args.push(format!("--start-join-addrs=127.0.0.1:{}", ports[1]));
        }
        podman(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    let started = Instant::now();
    wait_for("three containers in one cluster", Duration::from_secs(90), || {
        Ok(cli.leader(&rpc(0), NODES)?.is_some())
    })?;
    println!("containers: three formed a cluster by gossip in {:.1} s", started.elapsed().as_secs_f64());
    podman(&["healthcheck", "run", &names[0]]).context("the healthcheck")?;

    let values = |from: usize, to: usize| (from..to).map(|i| format!("c-{i}")).collect::<Vec<_>>();
    cli.produce(&cluster, &values(0, 100))?;
    for node in 0..NODES {
        wait_for("every container to hold the records", Duration::from_secs(30), || {
            Ok(cli.consume(&rpc(node))? == values(0, 100))
        })?;
    }
    let leader_addr = cli.leader(&rpc(0), NODES)?.context("no leader")?;
    let leader = (0..NODES).find(|node| rpc(*node) == leader_addr).context("the leader is none of ours")?;
    podman(&["kill", &names[leader]])?;
    let survivor = (leader + 1) % NODES;
    let killed = Instant::now();
    wait_for("a new leader", Duration::from_secs(30), || {
        Ok(cli.leader(&rpc(survivor), NODES)?.is_some_and(|new| new != leader_addr))
    })?;
    println!("containers: killed the leader; a new one in {:.1} s", killed.elapsed().as_secs_f64());
    cli.produce(&cluster, &values(100, 150))?;
    podman(&["start", &names[leader]])?;
    wait_for("the killed container to catch up", Duration::from_secs(60), || {
        Ok(cli.consume(&rpc(leader))? == values(0, 150))
    })?;
    println!("containers: the killed one started again and caught up");
    for name in &names {
        let stopping = Instant::now();
        podman(&["stop", "--time", &GRACE.to_string(), name])?;
        let took = stopping.elapsed();
        let code = podman(&["inspect", "--format", "{{.State.ExitCode}}", name])?;
        ensure!(code.trim() == "0", "{name} exited {} on SIGTERM", code.trim());
        ensure!(took < Duration::from_secs(GRACE), "{name} took {took:?} to stop");
        println!("containers: {name} stopped on SIGTERM, exit 0 in {:.1} s", took.as_secs_f64());
    }
    drop(containers);
    Ok(())
}

/// What one pod of the chart runs (from chart.py's `pods`).
struct Pod {
    name: String,
    host: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    http: u16,
    rpc: u16,
    liveness: String,
    readiness: String,
    scheme: String,
    grace: Duration,
}

impl Pod {
    fn from_json(pod: &Value, mounts: &BTreeMap<String, PathBuf>) -> Result<Self> {
        let text = |value: &Value| value.as_str().map(str::to_owned).context("not a string");
        let port =
            |value: &Value| value.as_u64().and_then(|port| u16::try_from(port).ok()).context("bad port");
        // Each mount's path, in the args, becomes the host directory standing in for it.
        let args = pod["args"]
            .as_array()
            .context("no args")?
            .iter()
            .map(|arg| {
                let mut arg = text(arg)?;
                for (path, dir) in mounts {
                    arg = arg.replace(&format!("={path}/"), &format!("={}/", dir.display()));
                    if arg.ends_with(&format!("={path}")) {
                        arg = arg.replace(&format!("={path}"), &format!("={}", dir.display()));
                    }
                }
                Ok(arg)
            })
            .collect::<Result<_>>()?;
        let env = pod["env"]
            .as_object()
            .context("no env")?
            .iter()
            .map(|(key, value)| Ok((key.clone(), text(value)?)))
            .collect::<Result<_>>()?;
        let probes = &pod["probes"];
        Ok(Self {
            name: text(&pod["name"])?,
            host: text(&pod["host"])?,
            args,
            env,
            http: port(&probes["readiness"]["port"])?,
            rpc: port(&pod["ports"]["rpc"])?,
            liveness: text(&probes["liveness"]["path"])?,
            readiness: text(&probes["readiness"]["path"])?,
            scheme: text(&probes["readiness"]["scheme"])?.to_lowercase(),
            grace: Duration::from_secs(pod["grace_seconds"].as_u64().context("no grace")?),
        })
    }
}

/// Network namespaces named after the pods, joined by a bridge in a namespace
/// of their own that also holds the clients (as a Service's callers would), and
/// `/etc/netns/<ns>/hosts` mapping the headless Service's names. Removed on drop.
struct Network {
    namespaces: Vec<String>,
    client: String,
}

impl Network {
    fn new(pods: &[Pod]) -> Result<Self> {
        let client = "proglog-check-client".to_owned();
        let mut network = Self { namespaces: Vec::new(), client: client.clone() };
        let address = |i: usize| format!("10.77.1.{}", i + 1);
        let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (i, pod) in pods.iter().enumerate() {
            hosts.push_str(&format!("{} {} {}\n", address(i), pod.host, pod.name));
        }
        for ns in std::iter::once(&client).chain(pods.iter().map(|pod| &pod.name)) {
            let _ = output("ip", &["netns", "del", ns]);
            output("ip", &["netns", "add", ns])?;
            network.namespaces.push(ns.clone());
            let etc = Path::new("/etc/netns").join(ns);
            std::fs::create_dir_all(&etc)?;
            std::fs::write(etc.join("hosts"), &hosts)?;
            output("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        output("ip", &["-n", &client, "link", "add", "br0", "type", "bridge"])?;
        output("ip", &["-n", &client, "addr", "add", "10.77.1.254/24", "dev", "br0"])?;
        output("ip", &["-n", &client, "link", "set", "br0", "up"])?;
        for (i, pod) in pods.iter().enumerate() {
            let outer = format!("veth{i}");
            output(
                "ip",
                &[
                    "link", "add", &outer, "netns", &client, "type", "veth", "peer", "name", "eth0", "netns",
                    &pod.name,
                ],
            )?;
            output("ip", &["-n", &client, "link", "set", &outer, "master", "br0", "up"])?;
            output("ip", &["-n", &pod.name, "addr", "add", &format!("{}/24", address(i)), "dev", "eth0"])?;
            output("ip", &["-n", &pod.name, "link", "set", "eth0", "up"])?;
        }
        Ok(network)
    }

    /// `program args` inside the client namespace.
    fn client_prefix(&self, program: &Path) -> Vec<String> {
        ["ip", "netns", "exec", &self.client]
            .map(str::to_owned)
            .into_iter()
            .chain([program.display().to_string()])
            .collect()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = output("ip", &["netns", "del", ns]);
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(ns));
        }
    }
}

/// A pod's agent, started in its namespace as the kubelet would start its
/// container: the rendered args (mount paths mapped to host directories) and
/// env, nothing inherited.
struct Running {
    child: Child,
}

impl Running {
    fn start(pod: &Pod, agent: &Path, log: &Path) -> Result<Self> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &pod.name])
            .arg(agent)
            .args(&pod.args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(&pod.env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", pod.name))?;
        Ok(Self { child })
    }

    /// SIGTERM, as the kubelet sends; the exit status, within `grace`.
    fn terminate(mut self, grace: Duration) -> Result<std::process::ExitStatus> {
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: kill with a pid of our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(start.elapsed() < grace, "no exit within the {grace:?} grace period");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The chart's pods, run for real: each pod's rendered args and env start an
/// agent in a network namespace named after it, so bootstrap, joining through
/// the headless names, the advertised names and the probes run as in the pods.
/// Then a rolling restart, highest ordinal first, under load.
fn pods(python: &Path, chart: &Path, script: &Path, binaries: &Binaries, work: &Path) -> Result<()> {
    require("ip", "iproute2")?;
    require("curl", "curl")?;
    std::fs::create_dir_all(work)?;
    let rendered = work.join("pods.json");
    let status = Command::new(python).arg(script).arg("pods").arg(chart).arg("{}").arg(&rendered).status()?;
    ensure!(status.success(), "rendering the pods failed");
    let rendered: Value = serde_json::from_str(&std::fs::read_to_string(&rendered)?)?;
    let rendered = rendered.as_array().context("pods.json is not a list")?;

    // The Secrets, made from `cargo xtask certs` output as the README says.
    let certs = work.join("certs");
    let headless_wildcard = "*.proglog.default.svc.cluster.local";
    let set = proglog_certs::write_dev_set_with_nodes(
        &certs,
        &[headless_wildcard, "proglog-client.default.svc.cluster.local", "localhost", "127.0.0.1"],
        &[],
    )?;
    let secrets: BTreeMap<&str, Vec<(&str, &Path)>> = BTreeMap::from([
        (
            "proglog-server-tls",
            vec![
                ("tls.crt", set.server_cert.as_path()),
                ("tls.key", &set.server_key),
                ("ca.crt", &set.ca_cert),
            ],
        ),
        (
            "proglog-peer-tls",
            vec![
                ("tls.crt", set.root_client_cert.as_path()),
                ("tls.key", &set.root_client_key),
                ("ca.crt", &set.ca_cert),
            ],
        ),
        ("proglog-gossip", vec![("gossip.key", set.gossip_key.as_path())]),
        ("proglog-acl", vec![("model.conf", set.acl_model.as_path()), ("policy.csv", &set.acl_policy)]),
    ]);
    let mut pods = Vec::new();
    for pod in rendered {
        let name = pod["name"].as_str().context("a pod without a name")?;
        let mut mounts = BTreeMap::new();
        for mount in pod["mounts"].as_array().context("no mounts")? {
            let path = mount["path"].as_str().context("a mount without a path")?;
            let dir = work.join(name).join(path.trim_start_matches('/').replace('/', "_"));
            std::fs::create_dir_all(&dir)?;
            if let Some(files) = mount["files"].as_object() {
                for (file, text) in files {
                    std::fs::write(dir.join(file), text.as_str().unwrap_or_default())?;
                }
            } else if let Some(secret) = mount["secret"].as_str() {
                let keys = secrets.get(secret).with_context(|| format!("no Secret {secret} to mount"))?;
                for (key, from) in keys {
                    std::fs::copy(from, dir.join(key))?;
                }
            }
            mounts.insert(path.to_owned(), dir);
        }
        pods.push(Pod::from_json(pod, &mounts)?);
    }
    let network = Network::new(&pods)?;
    let tls = pods.first().is_some_and(|pod| pod.scheme == "https");
    let mut prefix = network.client_prefix(&binaries.cli);
    if tls {
        for (flag, path) in [
            ("--ca-file", &set.ca_cert),
            ("--cert-file", &set.root_client_cert),
            ("--key-file", &set.root_client_key),
        ] {
            prefix.extend([flag.to_owned(), path.display().to_string()]);
        }
    }
    let cli = Cli { prefix };
    let curl = |args: &[&str]| {
        output("ip", &[&["netns", "exec", &network.client, "curl", "-s", "-m", "3"], args].concat())
    };
    // A kubelet's probe: plain GET, no client certificate, the pod's certificate unchecked.
    let probe = |pod: &Pod, path: &str| -> Result<bool> {
        let url = format!("{}://{}:{}{path}", pod.scheme, pod.host, pod.http);
        Ok(curl(&["-k", "-o", "/dev/null", "-w", "%{http_code}", &url]).unwrap_or_default() == "200")
    };
    let rpc = |pod: &Pod| format!("{}:{}", pod.host, pod.rpc);
    let cluster = format!("proglog://{}", pods.iter().map(rpc).collect::<Vec<_>>().join(","));
    let log = |pod: &Pod| work.join(format!("{}.log", pod.name));

    let mut running: Vec<Option<Running>> = pods
        .iter()
        .map(|pod| Running::start(pod, &binaries.agent, &log(pod)).map(Some))
        .collect::<Result<_>>()?;
    let started = Instant::now();
    for pod in &pods {
        let what = format!("{} ready (its readiness probe; its log: {})", pod.name, log(pod).display());
        wait_for(&what, Duration::from_secs(120), || {
            Ok(probe(pod, &pod.liveness)? && probe(pod, &pod.readiness)?)
        })?;
    }
    wait_for("every pod in the cluster", Duration::from_secs(60), || {
        Ok(cli.leader(&cluster, pods.len())?.is_some())
    })?;
    let servers = cli.servers(&cluster)?;
    for pod in &pods {
        ensure!(
            servers.iter().any(|server| server.0 == pod.name && server.1 == rpc(pod)),
            "GetServers does not advertise {} as {}: {servers:?}",
            pod.name,
            rpc(pod)
        );
    }
    println!(
        "pods: {} pods ready in {:.1} s ({} bootstrapped, the others joined by name; GetServers advertises the \
         headless names)",
        pods.len(),
        started.elapsed().as_secs_f64(),
        pods[0].name
    );

    // Load: one producer, one record a call, through the leader-aware client.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let longest_gap = Arc::new(Mutex::new(Duration::ZERO));
    let load = {
        let (stop, acknowledged, longest_gap) = (stop.clone(), acknowledged.clone(), longest_gap.clone());
        let (cli, cluster) = (cli.clone(), cluster.clone());
        std::thread::spawn(move || {
            let (mut sent, mut last_ack) = (0u64, Instant::now());
            while !stop.load(Ordering::Relaxed) {
                let value = format!("r-{sent}");
                sent += 1;
                if cli.produce(&cluster, std::slice::from_ref(&value)).is_ok() {
                    let mut gap = longest_gap.lock().unwrap_or_else(|poison| poison.into_inner());
                    *gap = (*gap).max(last_ack.elapsed());
                    last_ack = Instant::now();
                    acknowledged.lock().unwrap_or_else(|poison| poison.into_inner()).push(value);
                }
            }
        })
    };
    let acked = || acknowledged.lock().unwrap_or_else(|poison| poison.into_inner()).len();
    wait_for("the load to get going", Duration::from_secs(30), || Ok(acked() >= 20))?;
    for (ordinal, pod) in pods.iter().enumerate().rev() {
        let before = acked();
        let agent = running[ordinal].take().context("pod not running")?;
        let status = agent.terminate(pod.grace)?;
        ensure!(status.success(), "{} exited with {status} on SIGTERM", pod.name);
        running[ordinal] = Some(Running::start(pod, &binaries.agent, &log(pod))?);
        wait_for(&format!("{} ready again", pod.name), Duration::from_secs(120), || {
            probe(pod, &pod.readiness)
        })?;
        wait_for("records acknowledged after the restart", Duration::from_secs(30), || {
            Ok(acked() > before + 10)
        })?;
        println!("pods: restarted {} (SIGTERM, exit 0, ready again); the load went on", pod.name);
    }
    stop.store(true, Ordering::Relaxed);
    load.join().map_err(|_| anyhow::anyhow!("the load thread panicked"))?;
    let acknowledged = acknowledged.lock().unwrap_or_else(|poison| poison.into_inner()).clone();
    for pod in &pods {
        wait_for(
            &format!("{} to hold every acknowledged record", pod.name),
            Duration::from_secs(30),
            || {
                let held: std::collections::HashSet<String> = cli.consume(&rpc(pod))?.into_iter().collect();
                Ok(acknowledged.iter().all(|value| held.contains(value)))
            },
        )?;
    }
    let (ca, cert, key) = (
        set.ca_cert.display().to_string(),
        set.root_client_cert.display().to_string(),
        set.root_client_key.display().to_string(),
    );
    let metrics = |pod: &Pod| {
        let url = format!("{}://{}:{}/metrics", pod.scheme, pod.host, pod.http);
        curl(&["-f", "--cacert", &ca, "--cert", &cert, "--key", &key, &url])
    };
    for pod in &pods {
        wait_for(&format!("{} to count every pod a voter", pod.name), Duration::from_secs(60), || {
            let voters = metrics(pod)?;
            Ok(voters
                .lines()
                .any(|line| line.strip_prefix("proglog_raft_voters ") == Some(&pods.len().to_string())))
        })?;
    }
    let gap = *longest_gap.lock().unwrap_or_else(|poison| poison.into_inner());
    ensure!(
        gap < Duration::from_secs(10),
        "the cluster stopped serving for {gap:?} during the rolling restart"
    );
    println!(
        "pods: rolling restart done: {} acknowledged records, none lost, every pod holds them and counts {} \
         voters; longest wait between acknowledgements {} ms",
        acknowledged.len(),
        pods.len(),
        gap.as_millis()
    );
    for (agent, pod) in running.into_iter().zip(&pods) {
        if let Some(agent) = agent {
            ensure!(agent.terminate(pod.grace)?.success(), "{} did not exit 0", pod.name);
        }
    }
    drop(network);
    Ok(())
}
