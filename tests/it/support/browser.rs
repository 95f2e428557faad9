//! A headless Chromium for the console's tests, driven over WebDriver (fantoccini talking to
//! Debian's `chromedriver`, started on a free port and killed when the browser is dropped).
//! Without `chromium` and `chromedriver` the browser tests say they are skipped and pass,
//! unless `ZDMAP_REQUIRE_BROWSER=1` (which `.ci/run` sets, after `.ci/install-chromium`).
//!
//! Each page a test looks at can be saved as a screenshot: into `screenshots/` of the target
//! directory (a build artifact, never committed), and with `ZDMAP_UPDATE_SCREENSHOTS=1` also
//! into `docs/console/` for the README.

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The window every page is seen (and photographed) in.
const WIDTH: u32 = 1100;
const HEIGHT: u32 = 800;

/// A browser with one window.
pub struct Browser {
    client: Option<Client>,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The directory of the test binary's target (`CARGO_TARGET_DIR` honoured).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

impl Browser {
    /// A browser; `None` when Chromium or chromedriver is not installed, after saying the test
    /// is skipped (with `ZDMAP_REQUIRE_BROWSER=1`, a failure instead).
    pub async fn start() -> Option<Browser> {
        if !Path::new(CHROMIUM).is_file() || !Path::new(CHROMEDRIVER).is_file() {
            let missing = "chromium and chromium-driver are not installed (.ci/install-chromium installs them)";
            if std::env::var_os("ZDMAP_REQUIRE_BROWSER").is_some_and(|v| v == "1") {
                panic!("{missing}");
            }
            let test = std::thread::current()
                .name()
                .unwrap_or("a browser test")
                .to_owned();
            let _ = writeln!(std::io::stderr(), "{test}: skipped: {missing}");
            return None;
        }
        let port = super::serving::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut browser = Browser {
            client: None,
            driver,
        };
        let url = format!("http://127.0.0.1:{port}");
        super::wait::eventually(
            "chromedriver answers",
            Duration::from_secs(30),
            async || reqwest::get(format!("{url}/status")).await.map(drop),
        )
        .await;
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-extensions",
                    format!("--window-size={WIDTH},{HEIGHT}"),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("an object")
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .expect("a Chromium session");
        client
            .set_window_size(WIDTH, HEIGHT)
            .await
            .expect("window size");
        browser.client = Some(client);
        Some(browser)
    }

    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("started")
    }

    pub async fn open(&self, url: &str) {
        self.client().goto(url).await.expect("the page opens");
    }

    /// The path of the page shown now.
    pub async fn path(&self) -> String {
        self.client()
            .current_url()
            .await
            .expect("url")
            .path()
            .to_owned()
    }

    /// The element `css` selects, once it is on the page.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        let client = self.client();
        super::wait::eventually(
            &format!("{css} is on the page"),
            Duration::from_secs(20),
            async || client.find(Locator::Css(css)).await,
        )
        .await
    }

    /// The text of the element `css` selects.
    pub async fn text(&self, css: &str) -> String {
        // Found and read in one try: a page that changes between the two is tried again.
        let client = self.client();
        super::wait::eventually(
            &format!("the text of {css}"),
            Duration::from_secs(20),
            async || client.find(Locator::Css(css)).await?.text().await,
        )
        .await
    }

    /// Whether `css` selects anything on the page now.
    pub async fn has(&self, css: &str) -> bool {
        !self
            .client()
            .find_all(Locator::Css(css))
            .await
            .expect("find")
            .is_empty()
    }

    /// Types `text` into the field `css` selects, replacing what it held.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("clear");
        // A long text typed key by key is slow: set it, as a paste would.
        self.client()
            .execute(
                "arguments[0].value = arguments[1];",
                vec![serde_json::to_value(&field).expect("element"), json!(text)],
            )
            .await
            .expect("fill");
    }

    /// Clicks `css` (the test then waits for what the next page shows).
    pub async fn click(&self, css: &str) {
        let client = self.client();
        super::wait::eventually(
            &format!("{css} is clicked"),
            Duration::from_secs(20),
            async || client.find(Locator::Css(css)).await?.click().await,
        )
        .await
    }

    /// Runs `script` in the page and gives what it returns.
    pub async fn eval(&self, script: &str) -> Value {
        self.client()
            .execute(script, Vec::new())
            .await
            .expect("script runs")
    }

    /// Saves what the window shows as `NAME.png` among the build's artifacts.
    pub async fn screenshot(&self, name: &str) {
        self.save(name, false).await;
    }

    /// The same for a page the README shows: with `ZDMAP_UPDATE_SCREENSHOTS=1` it is also
    /// written to `docs/console/`.
    pub async fn screenshot_for_docs(&self, name: &str) {
        self.save(name, true).await;
    }

    async fn save(&self, name: &str, docs: bool) {
        let png = self.client().screenshot().await.expect("a screenshot");
        let dir = target_dir().join("screenshots");
        std::fs::create_dir_all(&dir).expect("the screenshots directory");
        std::fs::write(dir.join(format!("{name}.png")), &png).expect("the screenshot is saved");
        if docs && std::env::var_os("ZDMAP_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
            let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console");
            std::fs::create_dir_all(&docs).expect("docs/console");
            std::fs::write(docs.join(format!("{name}.png")), &png).expect("saved in docs");
        }
    }

    /// Ends the browser session (the driver goes with the drop).
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}
