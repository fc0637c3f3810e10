//! The control language of a running emulator, one command per line (the
//! control socket and stdin both speak it):
//!
//! ```text
//! set [both|uplink|downlink] key=value ...   change conditions (scenario keys)
//! down [both|uplink|downlink]                link down (drop everything)
//! up [both|uplink|downlink]                  link up
//! show                                       current conditions (JSON)
//! stats                                      packet counters (JSON)
//! schedule start|stop                        (re)start the scenario schedule from t=0 / stop it
//! ping                                       liveness
//! ```
//!
//! Replies are one line: `ok`, `ok <json>` or `error <message>`.

use crate::params::{Dir, LinkPatch};

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Set {
        dirs: Vec<Dir>,
        patch: Box<LinkPatch>,
    },
    Show,
    Stats,
    ScheduleStart,
    ScheduleStop,
    Ping,
}

fn dirs_of(word: Option<&str>) -> Option<Vec<Dir>> {
    match word {
        None | Some("both") => Some(Dir::BOTH.to_vec()),
        Some("uplink") => Some(vec![Dir::Uplink]),
        Some("downlink") => Some(vec![Dir::Downlink]),
        Some(_) => None,
    }
}

impl Command {
    pub fn parse(line: &str) -> Result<Command, String> {
        let mut words = line.split_whitespace().peekable();
        let verb = words.next().ok_or("empty command")?;
        let rest: Vec<&str> = words.collect();
        match verb {
            "set" => {
                let (dirs, kv) = match rest.first().and_then(|w| dirs_of(Some(w))) {
                    Some(d) if !rest[0].contains('=') => (d, &rest[1..]),
                    _ => (Dir::BOTH.to_vec(), &rest[..]),
                };
                if kv.is_empty() {
                    return Err("set: no key=value given".into());
                }
                let patch = LinkPatch::from_words(kv.iter().copied()).map_err(|e| e.to_string())?;
                Ok(Command::Set {
                    dirs,
                    patch: Box::new(patch),
                })
            }
            "up" | "down" => {
                if rest.len() > 1 {
                    return Err(format!("{verb}: at most one direction"));
                }
                let dirs = dirs_of(rest.first().copied())
                    .ok_or_else(|| format!("{verb}: direction is both, uplink or downlink"))?;
                let patch = Box::new(LinkPatch {
                    up: Some(verb == "up"),
                    ..Default::default()
                });
                Ok(Command::Set { dirs, patch })
            }
            "show" => Ok(Command::Show),
            "stats" => Ok(Command::Stats),
            "ping" => Ok(Command::Ping),
            "schedule" => match rest.as_slice() {
                ["start"] => Ok(Command::ScheduleStart),
                ["stop"] => Ok(Command::ScheduleStop),
                _ => Err("schedule: start or stop".into()),
            },
            other => Err(format!(
                "unknown command {other:?} (set, up, down, show, stats, schedule, ping)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_set_with_and_without_direction() {
        let c = Command::parse("set uplink jitter_ms=25 jitter_distribution=pareto").unwrap();
        let Command::Set { dirs, patch } = c else {
            panic!()
        };
        assert_eq!(dirs, vec![Dir::Uplink]);
        assert_eq!(patch.jitter_ms, Some(25.0));
        let Command::Set { dirs, patch } = Command::parse("set delay_ms=5").unwrap() else {
            panic!()
        };
        assert_eq!(dirs, Dir::BOTH.to_vec());
        assert_eq!(patch.delay_ms, Some(5.0));
    }

    #[test]
    fn parses_up_down_and_others() {
        let Command::Set { dirs, patch } = Command::parse("down").unwrap() else {
            panic!()
        };
        assert_eq!((dirs.len(), patch.up), (2, Some(false)));
        let Command::Set { dirs, patch } = Command::parse("up downlink").unwrap() else {
            panic!()
        };
        assert_eq!((dirs, patch.up), (vec![Dir::Downlink], Some(true)));
        assert_eq!(Command::parse(" show ").unwrap(), Command::Show);
        assert_eq!(
            Command::parse("schedule start").unwrap(),
            Command::ScheduleStart
        );
    }

    #[test]
    fn rejects_bad_commands() {
        for bad in [
            "",
            "set",
            "set uplink",
            "set bogus=1",
            "down sideways",
            "fly",
            "schedule",
        ] {
            assert!(Command::parse(bad).is_err(), "{bad:?}");
        }
    }
}
