//! What ships to deploy zdmap, checked as far as this machine can: the Dockerfile's command and
//! healthcheck run with the built binary, the compose file and the Helm chart parsed (the chart
//! rendered by `support::chart`), the systemd unit verified, completions and the man page.

use crate::support::chart;
use crate::support::command::run;
use crate::support::http::get;
use crate::support::serving::{KEY, spawn_in, stop_and_read_start};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use zdmap::emulator::{Emulator, EmulatorOptions};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(text: &str) -> Value {
    zdmap::mapping::yaml::parse(text)
        .unwrap_or_else(|e| panic!("{}:{}: {}", e.loc.line, e.loc.column, e.message))
        .to_json()
}

/// The variables `zdmap serve` reads: its flags' (from `--help`), and the credentials'
/// (destination.yaml's `*_env`, the NATS ones); a `_FILE` form of a secret is checked apart.
fn known_variables() -> Vec<String> {
    let (code, help, _) = run(&["serve", "--help"], "");
    assert_eq!(code, 0);
    let mut vars: Vec<String> = help
        .split("[env:")
        .skip(1)
        .map(|rest| {
            rest.trim_start()
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    let destination = yaml(&read("mappings/destination.yaml"));
    for group in destination["auth"].as_object().expect("auth").values() {
        for (name, value) in group.as_object().expect("an auth group") {
            if name.ends_with("_env") {
                vars.push(value.as_str().expect("a name").to_owned());
            }
        }
    }
    vars.extend(["ZDMAP_SET", "ZDMAP_LOG"].map(String::from));
    assert!(
        vars.iter().any(|v| v == "ZDMAP_WRITE_KEYS_FILE"),
        "{vars:?}"
    );
    vars
}

/// Each variable is one zdmap reads, itself or as the `_FILE` form of one.
fn assert_known(vars: impl IntoIterator<Item = String>, what: &str) {
    let known = known_variables();
    for var in vars {
        let base = var.strip_suffix("_FILE").unwrap_or(&var);
        assert!(
            known.iter().any(|k| k == &var || k == base),
            "{what}: zdmap reads no variable {var}"
        );
    }
}

/// A Dockerfile instruction's JSON-array form (`CMD ["a", "b"]`), from its last stage.
fn exec_form(dockerfile: &str, instruction: &str) -> Vec<String> {
    let joined = dockerfile.replace("\\\n", " ");
    let last_stage = joined.rsplit("\nFROM ").next().unwrap_or_default();
    let line = last_stage
        .lines()
        .rfind(|l| l.starts_with(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("no {instruction}"));
    let array = &line[line.find('[').expect("the exec form")..];
    serde_json::from_str(array).unwrap_or_else(|e| panic!("{line}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_images_command_serves_and_its_healthcheck_asks_healthz() {
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.matches("\nFROM ").count() + 1 >= 2,
        "multi-stage"
    );
    assert!(
        dockerfile.contains("\nUSER 10001"),
        "a user that is not root"
    );
    // What the runtime stage copies from the build context: image path -> repository path.
    let copies: BTreeMap<String, String> = dockerfile
        .rsplit("\nFROM ")
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .map(|l| {
            let (from, to) = l.split_once(' ').expect("COPY FROM TO");
            (to.trim().to_owned(), from.trim().to_owned())
        })
        .collect();
    let config_in_image = "/etc/zdmap/zdmap.yaml";
    let config = yaml(&read(&copies[config_in_image]));
    let port = config["listen"]
        .as_str()
        .expect("listen")
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(
        dockerfile.contains(&format!("\nEXPOSE {port}\n")),
        "EXPOSE the port of listen"
    );
    assert!(
        dockerfile.contains(&format!(
            "\nVOLUME {}\n",
            config["data_dir"].as_str().unwrap_or_default()
        )),
        "the data directory is the volume"
    );
    assert_eq!(
        copies[config["mappings"].as_str().expect("mappings")],
        "mappings"
    );

    let mut command = exec_form(&dockerfile, "ENTRYPOINT");
    assert_eq!(command.remove(0), "zdmap");
    command.extend(exec_form(&dockerfile, "CMD"));
    // Paths of the image, in the repository; what a run of the image sets, by variables (which
    // come before the file, as `docker run -e` does).
    let args: Vec<String> = command
        .iter()
        .map(|a| {
            copies
                .get(a)
                .map(|p| repo(p).display().to_string())
                .unwrap_or(a.clone())
        })
        .collect();
    assert_eq!(args[..2], ["serve", "--config"], "{command:?}");
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().display().to_string();
    let mappings = repo("mappings").display().to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (child, url) = spawn_in(
        data.path(),
        &args,
        &[
            ("ZDMAP_LISTEN", "127.0.0.1:0"),
            ("ZDMAP_DATA_DIR", &data_dir),
            ("ZDMAP_MAPPINGS", &mappings),
            ("ZDMAP_ZENDESK_URL", &emu.url()),
            ("ZDMAP_WRITE_KEYS", KEY),
            ("ZDMAP_SET", "requests_per_minute=0"),
        ],
    )
    .unwrap_or_else(|(code, e)| panic!("{code}: {e}"));
    assert_eq!(get(&format!("{url}/healthz")).await.0, 200);

    // The HEALTHCHECK's command, asking this server instead of the image's port.
    let mut check = exec_form(&dockerfile, "HEALTHCHECK");
    assert_eq!(check.remove(0), "zdmap");
    let at = check.iter().position(|a| a == "--url").expect("--url") + 1;
    assert_eq!(check[at], format!("http://127.0.0.1:{port}/healthz"));
    check[at] = format!("{url}/healthz");
    let check: Vec<&str> = check.iter().map(String::as_str).collect();
    let (code, _, stderr) = run(&check, "");
    assert_eq!(code, 0, "{stderr}");

    let start = stop_and_read_start(child); // JSON lines: the image's log_format
    assert_eq!(start["queue"], data_dir);
    let (code, _, stderr) = run(&check, "");
    assert_eq!(code, 1, "nothing answers once stopped");
    assert!(stderr.contains("unhealthy"), "{stderr}");
}

#[test]
fn the_compose_file_runs_one_server_or_three_replicas_on_a_nats_cluster() {
    let compose = yaml(&read("deploy/compose.yaml"));
    let services = compose["services"].as_object().expect("services");
    let in_profile = |profile: &str| -> Vec<(&String, &Value)> {
        services
            .iter()
            .filter(|(_, s)| {
                s["profiles"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p == profile))
            })
            .collect()
    };
    let volumes = compose["volumes"].as_object().expect("volumes");
    let secrets = compose["secrets"].as_object().expect("secrets");
    let mut variables = Vec::new();
    for (name, service) in services {
        for mount in service["volumes"].as_array().into_iter().flatten() {
            let source = mount
                .as_str()
                .expect("a short volume")
                .split(':')
                .next()
                .unwrap_or_default();
            assert!(
                volumes.contains_key(source),
                "{name}: volume {source} is declared"
            );
        }
        let mounted: Vec<&str> = service["secrets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for s in &mounted {
            assert!(secrets.contains_key(*s), "{name}: secret {s} is declared");
        }
        for (var, value) in service["environment"].as_object().into_iter().flatten() {
            if var.ends_with("_FILE") {
                let file = value.as_str().unwrap_or_default();
                let secret = file
                    .strip_prefix("/run/secrets/")
                    .unwrap_or_else(|| panic!("{name}: {var}"));
                assert!(
                    mounted.contains(&secret),
                    "{name}: {var} names a mounted secret"
                );
            }
            if !name.starts_with("nats") {
                variables.push(var.clone());
            }
        }
    }
    assert_known(variables, "deploy/compose.yaml");

    let single = in_profile("sqlite");
    assert_eq!(single.len(), 1);
    let volume = single[0].1["volumes"][0].as_str().expect("a volume");
    assert!(
        volume.ends_with(":/var/lib/zdmap"),
        "the data directory on a volume: {volume}"
    );
    assert!(single[0].1["environment"].get("ZDMAP_QUEUE").is_none());

    let nats = in_profile("nats");
    let nodes: Vec<&String> = nats
        .iter()
        .filter(|(_, s)| s["image"].as_str().is_some_and(|i| i.starts_with("nats:")))
        .map(|(n, _)| *n)
        .collect();
    let replicas: Vec<&Value> = nats
        .iter()
        .filter(|(n, _)| !nodes.contains(n))
        .map(|(_, s)| *s)
        .collect();
    assert_eq!((nodes.len(), replicas.len()), (3, 3));
    for node in &nodes {
        let command: Vec<&str> = services[*node]["command"]
            .as_array()
            .expect("command")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(command.contains(&"-js"), "{node}: JetStream");
        let routes = command[command
            .iter()
            .position(|a| *a == "--routes")
            .expect("--routes")
            + 1];
        for other in nodes.iter().filter(|o| *o != node) {
            assert!(
                routes.contains(&format!("nats://{other}:6222")),
                "{node} routes to {other}"
            );
        }
    }
    for replica in replicas {
        let env = &replica["environment"];
        let queue = env["ZDMAP_QUEUE"].as_str().expect("ZDMAP_QUEUE");
        for node in &nodes {
            assert!(
                queue.contains(&format!("nats://{node}:4222")),
                "{queue} names {node}"
            );
        }
        assert_eq!(env["ZDMAP_NATS_REPLICAS"], "3");
    }
}

/// The chart rendered with values.yaml and `changes` (`a.b` = value), as YAML documents by kind.
fn rendered(changes: &[(&str, Value)]) -> BTreeMap<String, Value> {
    let mut values = yaml(&read("deploy/helm/zdmap/values.yaml"));
    for (path, value) in changes {
        let slot = path.split('.').fold(&mut values, |v, k| &mut v[k]);
        *slot = value.clone();
    }
    let mut kinds = BTreeMap::new();
    for entry in std::fs::read_dir(repo("deploy/helm/zdmap/templates")).expect("templates") {
        let path = entry.expect("entry").path();
        let text = chart::render(&std::fs::read_to_string(&path).expect("read"), &values);
        if text.trim().is_empty() {
            continue;
        }
        let doc = yaml(&text);
        let kind = doc["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no kind", path.display()))
            .to_owned();
        kinds.insert(kind, doc);
    }
    kinds
}

/// The checks every workload of the chart passes: probes, port, secrets as `_FILE` variables.
fn check_workload(workload: &Value, port: u64) -> BTreeMap<String, String> {
    let pod = &workload["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["ports"][0]["containerPort"], port);
    assert_eq!(container["ports"][0]["name"], "http");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "http", "{probe}");
    }
    let env: BTreeMap<String, String> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().expect("name").to_owned(),
                e["value"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(env["ZDMAP_LISTEN"], format!("0.0.0.0:{port}"));
    let mount = container["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["name"] == "secrets")
        .expect("the secrets mounted");
    let dir = mount["mountPath"].as_str().expect("path");
    let secret_volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "secrets")
        .expect("a secrets volume");
    assert_eq!(secret_volume["secret"]["secretName"], "zdmap");
    for var in [
        "ZDMAP_WRITE_KEYS_FILE",
        "ZENDESK_OAUTH_CLIENT_ID_FILE",
        "ZENDESK_OAUTH_CLIENT_SECRET_FILE",
    ] {
        assert!(
            env[var].starts_with(&format!("{dir}/")),
            "{var} is a file of the secret"
        );
    }
    assert_known(env.keys().cloned(), "the Helm chart");
    assert_eq!(
        container["args"],
        serde_json::json!(["serve", "--config", "/etc/zdmap/zdmap.yaml"])
    );
    env
}

#[test]
fn the_helm_chart_runs_a_statefulset_on_sqlite_and_a_deployment_on_nats() {
    let sqlite = rendered(&[]);
    assert_eq!(
        sqlite.keys().collect::<Vec<_>>(),
        ["Service", "StatefulSet"]
    );
    let set = &sqlite["StatefulSet"];
    assert_eq!(set["spec"]["replicas"], 1);
    let env = check_workload(set, 8088);
    assert!(!env.contains_key("ZDMAP_QUEUE"));
    assert_eq!(env["ZDMAP_SET"], "subdomain=example");
    let claim = &set["spec"]["volumeClaimTemplates"][0];
    let data = set["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["name"] == claim["metadata"]["name"])
        .expect("the claim mounted");
    assert_eq!(data["mountPath"], "/var/lib/zdmap");
    assert_eq!(sqlite["Service"]["spec"]["ports"][0]["port"], 8088);

    let nats = rendered(&[
        (
            "queue.nats",
            "nats://nats-0.nats:4222,nats://nats-1.nats:4222".into(),
        ),
        ("queue.natsReplicas", 3.into()),
        ("port", 9000.into()),
        ("replicas", 4.into()),
    ]);
    assert_eq!(nats.keys().collect::<Vec<_>>(), ["Deployment", "Service"]);
    let deployment = &nats["Deployment"];
    assert_eq!(deployment["spec"]["replicas"], 4);
    let env = check_workload(deployment, 9000);
    assert_eq!(
        env["ZDMAP_QUEUE"],
        "nats://nats-0.nats:4222,nats://nats-1.nats:4222"
    );
    assert_eq!(env["ZDMAP_NATS_REPLICAS"], "3");
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = read("deploy/zdmap.service");
    // Each `_FILE` variable names a credential the unit loads.
    for line in unit.lines().filter_map(|l| l.strip_prefix("Environment=")) {
        let (var, value) = line.split_once('=').expect("NAME=VALUE");
        if let Some(name) = value.strip_prefix("%d/") {
            assert!(var.ends_with("_FILE"), "{var}");
            assert!(
                unit.contains(&format!("\nLoadCredential={name}:")),
                "{var} is loaded"
            );
        }
        assert_known([var.to_owned()], "deploy/zdmap.service");
    }
    for needed in [
        "DynamicUser=yes",
        "StateDirectory=zdmap",
        "Environment=ZDMAP_DATA_DIR=%S/zdmap",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(&format!("\n{needed}\n")), "{needed}");
    }
    let Ok(version) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        println!("skipped: systemd-analyze is not installed");
        return;
    };
    assert!(version.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("zdmap.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/zdmap", env!("CARGO_BIN_EXE_zdmap")),
    )
    .expect("write");
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    let said = String::from_utf8_lossy(&out.stderr);
    // Without a running systemd (a container) it may only say so; what it says of the unit counts.
    let about_unit: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("zdmap.service"))
        .collect();
    assert!(
        out.status.success() || !said.contains("zdmap.service"),
        "{said}"
    );
    assert!(about_unit.is_empty(), "{said}");
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef zdmap"),
        ("fish", "complete -c zdmap"),
    ] {
        let (code, script, stderr) = run(&["completions", shell], "");
        assert_eq!(code, 0, "{stderr}");
        assert!(script.contains(marker), "{shell}");
        assert!(
            script.contains("write-key-file") && script.contains("healthcheck"),
            "{shell}"
        );
    }
    let (code, _, _) = run(&["completions", "tcsh"], "");
    assert_eq!(code, 64);

    let (code, page, _) = run(&["man"], "");
    assert_eq!(code, 0);
    assert!(
        page.starts_with(".ie") || page.contains(".TH zdmap 1"),
        "{page}"
    );
    assert!(
        page.contains("serve") && page.contains("dead\\-letters"),
        "the commands listed"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, stderr) = run(&["man", "--dir", dir.path().to_str().expect("utf-8")], "");
    assert_eq!(code, 0, "{stderr}");
    let serve = std::fs::read_to_string(dir.path().join("zdmap-serve.1")).expect("zdmap-serve.1");
    assert!(
        serve.contains("\\-\\-config") && serve.contains("ZDMAP_LISTEN"),
        "{serve}"
    );
    // The page renders without complaints when groff is there.
    if let Ok(out) = std::process::Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(dir.path().join("zdmap-serve.1"))
        .output()
    {
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        println!("skipped rendering: groff is not installed");
    }
}
