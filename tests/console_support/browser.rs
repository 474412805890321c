//! Headless Chromium (Debian's `chromium` + `chromium-driver`) driven over WebDriver with
//! fantoccini. `launch()` starts a chromedriver of the test's own on a free port and one
//! browser session with a fresh profile; both end when the `Browser` drops.

use std::io::Write;
use std::net::TcpListener as StdListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

/// Chromium's flags for a headless run as root in a container, with nothing phoning home.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--window-size=1360,860",
    "--force-device-scale-factor=1",
    "--lang=en-US",
];

pub struct Browser {
    pub client: Client,
    driver: Option<Child>,
    _profile: tempfile::TempDir,
    /// One browser at a time: each is a few processes and the machine may have two cores.
    _turn: tokio::sync::SemaphorePermit<'static>,
}

/// WebDriver's codes for the Enter and Control keys.
pub const ENTER: char = '\u{e007}';
pub const CONTROL: char = '\u{e009}';

static TURNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
}

/// A browser session, or `None` when chromedriver is not installed and `CI` is unset (the
/// test then says loudly that it did not run). Under CI a missing browser fails the test.
pub async fn launch() -> Option<Browser> {
    let Some(driver_path) = on_path("chromedriver") else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "CI is set but chromedriver is not installed: apt-get install chromium \
                 chromium-driver (.ci/run does)"
            );
        }
        // Straight to stderr: the test harness would swallow eprintln! of a passing test.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: chromedriver is not installed, so this browser test did not run. \
             Install it with `apt-get install chromium chromium-driver` (.ci/run does). ***\n"
        );
        return None;
    };
    let turn = TURNS
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let port = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = Command::new(&driver_path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, so the browsers it starts end with it.
        .process_group(0)
        .spawn()
        .expect("chromedriver starts");
    let profile = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.path().display()));
    let mut options = json!({ "args": args });
    if let Some(binary) = on_path("chromium") {
        options["binary"] = json!(binary);
    }
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": options,
        // An alert an attack opened stays open, for the test to find.
        "unhandledPromptBehavior": "ignore",
    });
    let capabilities = capabilities.as_object().unwrap().clone();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        match ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities.clone())
            .connect(&url)
            .await
        {
            Ok(client) => break client,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no browser session from chromedriver at {url}: {e}"),
        }
    };
    Some(Browser {
        client,
        driver: Some(driver),
        _profile: profile,
        _turn: turn,
    })
}

impl Browser {
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigates");
    }

    /// Presses and releases one key on whatever has the focus, as a person would.
    pub async fn press(&self, key: char) {
        self.press_holding(&[], key).await;
    }

    /// Presses and releases `key` while the `held` keys are down (Control, Shift).
    async fn press_holding(&self, held: &[char], key: char) {
        let mut actions = KeyActions::new("keyboard".into());
        for &value in held {
            actions = actions.then(KeyAction::Down { value });
        }
        actions = actions
            .then(KeyAction::Down { value: key })
            .then(KeyAction::Up { value: key });
        for &value in held.iter().rev() {
            actions = actions.then(KeyAction::Up { value });
        }
        self.client
            .perform_actions(actions)
            .await
            .expect("key press");
    }

    /// Presses `key` with Control held (Ctrl+Enter submits from a text field) and waits for
    /// the page it leads to.
    pub async fn ctrl_press_and_wait(&self, key: char) {
        self.mark_page().await;
        self.press_holding(&[CONTROL], key).await;
        self.wait_new_page().await;
    }

    /// Presses `key` (Enter: the answer form's submit) and asserts the answer was saved.
    pub async fn press_and_expect_saved(&self, key: char) {
        self.press_and_wait(key).await;
        assert_eq!(
            self.path().await,
            "/task?saved=1",
            "{}",
            self.text("body").await
        );
    }

    /// Sends the answer form with its Send button and waits for the next task.
    pub async fn send(&self) {
        self.find("#send").await.click().await.unwrap();
        self.wait_path("/task?saved=1").await;
    }

    /// The id of the item the task page shows.
    pub async fn shown_id(&self) -> String {
        self.find("#answer-form input[name=id]")
            .await
            .attr("value")
            .await
            .unwrap()
            .expect("the form carries the item's id")
    }

    /// Asserts that no script of a record ran: `window.pwned` is unset and the console's own
    /// script is the page's only one.
    pub async fn assert_no_script_ran(&self) {
        assert_eq!(
            self.execute("return typeof window.pwned").await,
            "undefined"
        );
        assert_eq!(
            self.execute("return document.scripts.length").await,
            1,
            "only the console's own script"
        );
    }

    /// Waits up to 10 s until the JavaScript expression `condition` is true.
    pub async fn wait_until(&self, condition: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.execute(&format!("return !!({condition})")).await == true {
                return;
            }
            assert!(Instant::now() < deadline, "never true: {condition}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The element matching `css`, waiting up to 10 s for it to appear.
    pub async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
    }

    pub async fn has(&self, css: &str) -> bool {
        self.client.find(Locator::Css(css)).await.is_ok()
    }

    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    /// The path (and query) of the page shown.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// Waits until the page's path starts with `prefix`.
    pub async fn wait_path(&self, prefix: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let path = self.path().await;
            if path.starts_with(prefix) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still on {path}, wanted {prefix}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the page's body text contains `text`.
    pub async fn wait_text(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let body = self.text("body").await;
            if body.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{text:?} never appeared in:\n{body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn execute(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, vec![])
            .await
            .expect("script runs")
    }

    /// Saves a screenshot of the page when `REVIEWLOOP_SCREENSHOTS=1`.
    pub async fn screenshot(&self, name: &str) {
        if std::env::var("REVIEWLOOP_SCREENSHOTS").as_deref() != Ok("1") {
            return;
        }
        let png = self.client.screenshot().await.expect("screenshot");
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }

    /// Signs in through the form as a person does.
    pub async fn sign_in(&self, base: &str, name: &str, token: Option<&str>) {
        self.goto(&format!("{base}/signin")).await;
        self.find("#name").await.send_keys(name).await.unwrap();
        if let Some(token) = token {
            self.find("#token").await.send_keys(token).await.unwrap();
        }
        self.mark_page().await;
        self.find("#signin").await.click().await.unwrap();
        self.wait_new_page().await;
        assert!(
            !self.path().await.starts_with("/signin"),
            "sign-in as {name} refused: {}",
            self.text("body").await
        );
    }

    /// Presses `key` and waits for the page it leads to (a submit, a skip).
    pub async fn press_and_wait(&self, key: char) {
        self.mark_page().await;
        self.press(key).await;
        self.wait_new_page().await;
    }

    async fn mark_page(&self) {
        self.execute("window.reviewloopTestOldPage = true").await;
    }

    /// Waits until the marked page was replaced by a new, loaded one.
    async fn wait_new_page(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = self
                .client
                .execute(
                    "return typeof window.reviewloopTestOldPage === 'undefined' \
                     && document.readyState === 'complete'",
                    vec![],
                )
                .await;
            if let Ok(serde_json::Value::Bool(true)) = state {
                return;
            }
            assert!(Instant::now() < deadline, "the page never changed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Signs out with the header's button.
    pub async fn sign_out(&self) {
        self.mark_page().await;
        self.find("header form button").await.click().await.unwrap();
        self.wait_new_page().await;
        self.wait_path("/signin").await;
    }

    pub async fn quit(mut self) {
        let _ = self.client.clone().close().await;
        if let Some(driver) = self.driver.take() {
            stop_driver(driver);
        }
    }
}

fn stop_driver(mut driver: Child) {
    // The whole group: chromedriver and the browser processes it started.
    let group = format!("-{}", driver.id());
    let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = driver.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    let _ = driver.wait();
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that panicked before quit(): still leave no browser behind.
        if let Some(mut driver) = self.driver.take() {
            let group = format!("-{}", driver.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = driver.wait();
        }
    }
}
