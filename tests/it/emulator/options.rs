//! The emulator's flags and options, and an emulator started in the test process.

use clap::Parser;
use zdmap::emulator::{EmulatorOptions, LostAnswer, RuntimeKnobs, Secret};

use super::{Cli, EmulatorApi};

#[tokio::test]
async fn flags_parse_into_options_and_an_in_process_emulator_takes_a_free_port() {
    let cli = Cli::try_parse_from([
        "zdmap",
        "--listen",
        "127.0.0.1:0",
        "--rpm",
        "5",
        "--fail-rate",
        "0.25",
        "--latency-ms",
        "3",
        "--seed",
        "7",
        "--api-token",
        "tok-abc-123",
        "--bulk-import",
    ])
    .expect("flags parse");
    assert!(
        !format!("{:?}", cli.args).contains("tok-abc-123"),
        "tokens never in Debug"
    );
    let opts = EmulatorOptions::from(cli.args);
    assert_eq!(
        (
            opts.rpm,
            opts.fail_rate,
            opts.latency_ms,
            opts.seed,
            opts.bulk_import
        ),
        (Some(5), 0.25, 3, 7, true)
    );
    assert_eq!(opts.api_token, Some(Secret::new("tok-abc-123")));
    let defaults = Cli::try_parse_from(["zdmap"]).expect("no flags");
    assert_eq!(defaults.args.listen.to_string(), "127.0.0.1:8089");

    let d = EmulatorOptions::default();
    assert_eq!(
        (
            d.listen.port(),
            d.rpm,
            d.fail_rate,
            d.seed,
            d.bulk_import,
            d.subdomain.as_str()
        ),
        (0, None, 0.0, 0, false, "example")
    );
    let api = EmulatorApi::start().await;
    assert!(api.emu.url().starts_with("http://127.0.0.1:"));
    assert_ne!(api.emu.url(), "http://127.0.0.1:0");
    assert_eq!(api.get("/api/v2/users").await.status, 200);
    api.emu.shutdown().await;
}

#[tokio::test]
async fn fault_and_job_flags_parse_and_the_request_log_keeps_the_newest() {
    let cli = Cli::try_parse_from([
        "zdmap",
        "--lost-answer-rate",
        "0.3",
        "--lost-answer",
        "drop",
        "--job-delay-ms",
        "1500",
        "--job-limit",
        "5",
        "--job-limit-status",
        "403",
        "--job-fail-rate",
        "0.1",
        "--request-log-size",
        "3",
    ])
    .expect("flags parse");
    let opts = EmulatorOptions::from(cli.args);
    let k = &opts.knobs;
    assert_eq!(
        (
            k.lost_answer_rate,
            k.lost_answer,
            k.job_delay_ms,
            k.job_limit,
            k.job_limit_status,
            k.job_fail_rate,
            k.request_log_size
        ),
        (0.3, LostAnswer::Drop, 1500, 5, 403, 0.1, 3)
    );
    let bad = Cli::try_parse_from(["zdmap", "--lost-answer", "sometimes"]);
    assert!(bad.is_err());

    let api = EmulatorApi::with(EmulatorOptions {
        knobs: RuntimeKnobs {
            request_log_size: 3,
            ..RuntimeKnobs::default()
        },
        ..Default::default()
    })
    .await;
    for _ in 0..5 {
        api.get("/api/v2/users").await;
    }
    let seqs: Vec<u64> = api
        .emu
        .requests()
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    assert_eq!(seqs, [3, 4, 5], "the newest three");
}
