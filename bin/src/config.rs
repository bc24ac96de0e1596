//! `--config FILE` for `p2p-node peer` and `p2p-node tracker`: a TOML file whose keys are the
//! subcommand's long options (`tracker = ["192.0.2.10:7000"]`, `exit-when-done = true`).
//!
//! The file is turned into command-line arguments placed before the typed ones, so clap checks
//! both in the same way (one parser per option), and an option typed on the command line
//! replaces the file's value (for a repeatable option, all of the file's values). A key that is
//! not an option of the subcommand, or a value of the wrong shape, is a usage error naming it.

use std::ffi::OsString;
use std::path::Path;

use clap::error::ErrorKind;
use clap::{Arg, ArgAction, Command};

/// The option that names the file.
const CONFIG_OPTION: &str = "config";
/// Subcommands that take `--config`.
const CONFIGURABLE: [&str; 2] = ["peer", "tracker"];
/// Bytes of a configuration file read at most.
const CONFIG_BYTES_MAX: u64 = 64 * 1024;

/// `args` (the program's, its name first) with the options of the `--config` file, if one is
/// given to a configurable subcommand, inserted right after the subcommand's name.
pub fn expand(args: Vec<OsString>, command: &Command) -> Result<Vec<OsString>, clap::Error> {
    let Some(at) = args.iter().skip(1).position(|arg| !arg.to_string_lossy().starts_with('-')).map(|i| i + 1) else {
        return Ok(args);
    };
    let name = args[at].to_string_lossy().into_owned();
    let Some(sub) = command.find_subcommand(&name).filter(|_| CONFIGURABLE.contains(&name.as_str())) else {
        return Ok(args);
    };
    let typed: Vec<String> = args[at + 1..].iter().map(|arg| arg.to_string_lossy().into_owned()).collect();
    let Some(path) = config_path(&typed) else { return Ok(args) };
    let usage = |message: String| command.clone().error(ErrorKind::InvalidValue, format!("--config {path}: {message}"));
    let table = read_table(Path::new(&path)).map_err(usage)?;
    let mut options = Vec::new();
    for (key, value) in &table {
        let arg = option_named(sub, key).ok_or_else(|| usage(unknown_key(sub, key)))?;
        if is_typed(&typed, key) {
            continue;
        }
        options.extend(as_args(arg, key, value).map_err(usage)?);
    }
    let mut expanded = args;
    expanded.splice(at + 1..at + 1, options);
    Ok(expanded)
}

/// The FILE of `--config FILE` or `--config=FILE` among a subcommand's typed arguments.
fn config_path(typed: &[String]) -> Option<String> {
    let flag = format!("--{CONFIG_OPTION}");
    typed.iter().enumerate().find_map(|(i, arg)| match arg.strip_prefix(&flag) {
        Some("") => typed.get(i + 1).cloned(),
        Some(rest) => rest.strip_prefix('=').map(str::to_owned),
        None => None,
    })
}

fn read_table(path: &Path) -> Result<toml::Table, String> {
    let length = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?.len();
    if length > CONFIG_BYTES_MAX {
        return Err(format!("larger than {CONFIG_BYTES_MAX} bytes"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    toml::from_str::<toml::Table>(&text).map_err(|e| format!("not valid TOML: {}", e.message().trim()))
}

/// The subcommand's option whose long name is `key` (not `--config` itself, nor `--help`).
fn option_named<'a>(sub: &'a Command, key: &str) -> Option<&'a Arg> {
    sub.get_arguments()
        .find(|arg| arg.get_long() == Some(key) && key != CONFIG_OPTION && !matches!(arg.get_action(), ArgAction::Help))
}

fn unknown_key(sub: &Command, key: &str) -> String {
    let keys: Vec<&str> =
        sub.get_arguments().filter_map(Arg::get_long).filter(|long| option_named(sub, long).is_some()).collect();
    format!("unknown key `{key}` (the keys of `{}` are: {})", sub.get_name(), keys.join(", "))
}

/// Whether the command line gives the option `key` itself.
fn is_typed(typed: &[String], key: &str) -> bool {
    let flag = format!("--{key}");
    typed.iter().any(|arg| arg == &flag || arg.strip_prefix(&flag).is_some_and(|rest| rest.starts_with('=')))
}

/// The command-line form of `key = value` for the option `arg`.
fn as_args(arg: &Arg, key: &str, value: &toml::Value) -> Result<Vec<OsString>, String> {
    let flag = OsString::from(format!("--{key}"));
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return match value {
            toml::Value::Boolean(true) => Ok(vec![flag]),
            toml::Value::Boolean(false) => Ok(Vec::new()),
            _ => Err(format!("`{key}` is true or false")),
        };
    }
    let values = match value {
        toml::Value::Array(values) if matches!(arg.get_action(), ArgAction::Append) => values.iter().collect(),
        toml::Value::Array(_) => return Err(format!("`{key}` takes one value, not a list")),
        one => vec![one],
    };
    let mut args = Vec::with_capacity(2 * values.len());
    for value in values {
        let text = match value {
            toml::Value::String(text) => text.clone(),
            toml::Value::Integer(number) => number.to_string(),
            _ => return Err(format!("`{key}` takes a string or a whole number")),
        };
        args.extend([flag.clone(), OsString::from(text)]);
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::cli::{Cli, NodeCommand, PeerArgs};

    /// `p2p-node ARGS` parsed with the configuration `toml` written to a file given as `--config`
    /// right after the subcommand.
    fn parse_with(toml: &str, args: &[&str]) -> Result<Cli, clap::Error> {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, toml).expect("write the configuration");
        let mut all: Vec<OsString> = vec!["p2p-node".into(), args[0].into(), "--config".into(), path.into()];
        all.extend(args[1..].iter().map(OsString::from));
        Cli::try_parse_from(expand(all, &Cli::command())?)
    }

    fn peer(cli: Cli) -> PeerArgs {
        match cli.command {
            NodeCommand::Peer(peer) => peer,
            other => panic!("a peer command, got {other:?}"),
        }
    }

    const PEER: &str = r#"
        tracker = ["127.0.0.1:7000", "127.0.0.1:7001"]
        store = "/srv/swarm"
        listen = "0.0.0.0:7002"
        get = ["abcdef01"]
        exit-when-done = true
        json = false
        upload-limit = 1000000
    "#;

    #[test]
    fn every_key_of_the_file_sets_its_option() {
        let peer = peer(parse_with(PEER, &["peer"]).expect("valid"));
        let tracker = |port| SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(peer.tracker_addrs(), [tracker(7000), tracker(7001)]);
        assert_eq!(peer.store, Path::new("/srv/swarm"));
        assert_eq!(peer.listen, SocketAddr::from(([0, 0, 0, 0], 7002)));
        assert_eq!(peer.get.len(), 1);
        assert!(peer.exit_when_done && !peer.json);
        assert_eq!(peer.upload_limit, Some(1_000_000));
    }

    #[test]
    fn the_command_line_overrides_the_file() {
        let typed = ["peer", "--tracker", "127.0.0.1:9000", "--listen=127.0.0.1:9001", "--upload-limit", "5"];
        let peer = peer(parse_with(PEER, &typed).expect("valid"));
        assert_eq!(
            peer.tracker_addrs(),
            [SocketAddr::from(([127, 0, 0, 1], 9000))],
            "the typed list replaces the file's"
        );
        assert_eq!(peer.listen, SocketAddr::from(([127, 0, 0, 1], 9001)));
        assert_eq!(peer.upload_limit, Some(5));
        assert_eq!(peer.store, Path::new("/srv/swarm"), "what is not typed comes from the file");
    }

    #[test]
    fn the_tracker_takes_a_file_too() {
        let cli = parse_with("listen = \"127.0.0.1:7000\"\nhttp = \"127.0.0.1:8000\"", &["tracker"]).expect("valid");
        let NodeCommand::Tracker { listen, http, .. } = cli.command else { panic!("a tracker command") };
        assert_eq!(listen, SocketAddr::from(([127, 0, 0, 1], 7000)));
        assert_eq!(http, Some(SocketAddr::from(([127, 0, 0, 1], 8000))));
    }

    #[test]
    fn unknown_keys_and_misshapen_values_are_usage_errors_naming_the_key() {
        let cases = [
            ("trackers = [\"127.0.0.1:7000\"]", "unknown key `trackers`"),
            ("config = \"other.toml\"", "unknown key `config`"),
            ("exit-when-done = \"yes\"", "`exit-when-done` is true or false"),
            ("listen = [\"127.0.0.1:1\", \"127.0.0.1:2\"]", "`listen` takes one value"),
            ("upload-limit = 1.5", "`upload-limit` takes a string or a whole number"),
            ("store = ", "not valid TOML"),
        ];
        for (toml, expected) in cases {
            let error =
                parse_with(toml, &["peer", "--tracker", "127.0.0.1:7000", "--store", "s"]).map(drop).expect_err(toml);
            assert_eq!(error.kind(), ErrorKind::InvalidValue, "{toml}");
            assert!(error.to_string().contains(expected), "{toml}: {error}");
        }
        let error = parse_with("upload-limit = 0", &["peer", "--tracker", "127.0.0.1:7000", "--store", "s"])
            .map(drop)
            .expect_err("out of range");
        assert!(error.to_string().contains("--upload-limit"), "the option's own check applies: {error}");
    }

    #[test]
    fn other_subcommands_and_command_lines_without_config_are_left_alone() {
        let args: Vec<OsString> = ["p2p-node", "-v", "id", "--config", "f"].iter().map(OsString::from).collect();
        assert_eq!(expand(args.clone(), &Cli::command()).expect("unchanged"), args);
        let args: Vec<OsString> = ["p2p-node", "peer", "--store", "s"].iter().map(OsString::from).collect();
        assert_eq!(expand(args.clone(), &Cli::command()).expect("unchanged"), args);
    }
}
