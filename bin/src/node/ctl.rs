//! `p2p-node ctl`: asks a running peer, through its HTTP API, for its files, a download or a
//! share, or to pause, resume or remove a file. Paths are made absolute here, since the peer may run in another directory. An answer
//! other than a success is the job failing (exit 1) with the peer's message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cli::{CtlArgs, CtlCommand};
use crate::report;

/// How long one request to the peer may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs one `ctl` subcommand.
pub fn run(args: &CtlArgs) -> anyhow::Result<()> {
    let api = Api { base: format!("http://{}/api/v1", args.http), token_file: args.token_file.clone() };
    match &args.command {
        CtlCommand::Ls => ls(&api),
        CtlCommand::Get { file_id, out } => {
            let out = out.as_deref().map(absolute).transpose()?;
            let answer = api.post("downloads", json!({ "file_id": file_id.as_str(), "out": out }))?;
            let file_id = text(&answer, "file_id")?;
            match answer.get("path").and_then(Value::as_str) {
                Some(path) => report::complete(
                    file_id.parse::<p2p_core::FileIdPrefix>()?.as_full().context("an id")?,
                    Path::new(path),
                ),
                None => report::ctl_state(text(&answer, "state")?, file_id),
            }
            Ok(())
        }
        CtlCommand::Share { path } => {
            let answer = api.post("shares", json!({ "path": absolute(path)? }))?;
            let pieces = answer.get("pieces_total").and_then(Value::as_u64).unwrap_or(0);
            report::ctl_shared(text(&answer, "file_id")?, text(&answer, "name")?, pieces);
            Ok(())
        }
        CtlCommand::Pause { file_id } => changed(&api.post(&format!("files/{}/pause", file_id.as_str()), json!({}))?),
        CtlCommand::Resume { file_id } => changed(&api.post(&format!("files/{}/resume", file_id.as_str()), json!({}))?),
        CtlCommand::Rm { file_id, delete_data } => {
            changed(&api.delete(&format!("files/{}?delete_data={delete_data}", file_id.as_str()))?)
        }
    }
}

/// Prints the state a change left a file in.
fn changed(answer: &Value) -> anyhow::Result<()> {
    report::ctl_state(text(answer, "state")?, text(answer, "file_id")?);
    Ok(())
}

fn ls(api: &Api) -> anyhow::Result<()> {
    #[derive(Deserialize)]
    struct Files {
        files: Vec<File>,
    }
    #[derive(Deserialize)]
    struct File {
        file_id: String,
        name: Option<String>,
        state: String,
        chunks_have: u64,
        chunks_total: u64,
    }
    let files: Files = serde_json::from_value(api.get("files")?).context("an unexpected answer")?;
    if files.files.is_empty() {
        eprintln!("the peer has no files");
    }
    for file in &files.files {
        report::ctl_file(&file.file_id, &file.state, file.chunks_have, file.chunks_total, file.name.as_deref());
    }
    Ok(())
}

/// The peer's API.
struct Api {
    base: String,
    token_file: Option<PathBuf>,
}

impl Api {
    fn get(&self, path: &str) -> anyhow::Result<Value> {
        answer(self.agent().get(&format!("{}/{path}", self.base)).call())
    }

    fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let request = self.authorized(self.agent().post(&format!("{}/{path}", self.base)))?;
        answer(request.send_json(body))
    }

    fn delete(&self, path: &str) -> anyhow::Result<Value> {
        answer(self.authorized(self.agent().delete(&format!("{}/{path}", self.base)))?.call())
    }

    /// `request` with the token of `--token-file`, which changes need.
    fn authorized(&self, request: ureq::Request) -> anyhow::Result<ureq::Request> {
        let Some(token_file) = &self.token_file else {
            return Err(report::UsageError("this needs --token-file (the peer's STORE/http-token)".into()).into());
        };
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("cannot read the token file {}", token_file.display()))?;
        Ok(request.set("Authorization", &format!("Bearer {}", token.trim())))
    }

    fn agent(&self) -> ureq::Agent {
        ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build()
    }
}

/// The JSON of a successful answer, or the peer's error message.
fn answer(result: Result<ureq::Response, ureq::Error>) -> anyhow::Result<Value> {
    match result {
        Ok(response) => Ok(response.into_json()?),
        Err(ureq::Error::Status(status, response)) => {
            let message =
                response.into_json::<Value>().ok().and_then(|body| body.get("error")?.as_str().map(str::to_owned));
            bail!("the peer answered {status}: {}", message.unwrap_or_else(|| "no message".into()))
        }
        Err(ureq::Error::Transport(e)) => bail!("cannot reach the peer's HTTP API: {e}"),
    }
}

fn text<'a>(answer: &'a Value, field: &str) -> anyhow::Result<&'a str> {
    answer.get(field).and_then(Value::as_str).with_context(|| format!("an answer without {field}"))
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot make {} absolute", path.display()))
}
