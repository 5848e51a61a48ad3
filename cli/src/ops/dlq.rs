//! `sluice dlq`: the dead letters, with their reasons, delivery counts and
//! original headers; redrive them (publish the original again) or purge
//! them. Both leave a resolution record in the dead-letter stream
//! ([`sluice_broker::dead_letter`]), so the history stays auditable and the
//! same commands work on every backend.

use anyhow::{Context, bail};
use serde_json::json;
use sluice_broker::dead_letter::{self, DeadLetter};
use sluice_broker::{Broker, subject};
use sluice_proto::Registry;

use super::{BrokerArg, Output, print_line};

/// Arguments of `sluice dlq`.
#[derive(Debug, clap::Args)]
pub(crate) struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
    /// pretty: lines and blocks for people; json: one JSON object per line.
    #[arg(long, value_enum, default_value_t, global = true)]
    output: Output,
    #[command(flatten)]
    broker: BrokerArg,
}

/// Which dead letters: those of a subject filter, or of every shop domain.
#[derive(Debug, Clone, clap::Args)]
struct Which {
    /// Only dead letters first published on subjects matching FILTER (e.g.
    /// orders.>); by default those of every domain of the shop.
    #[arg(long, value_name = "FILTER")]
    subject: Option<String>,
}

/// Dead letters named by id, or all of them.
#[derive(Debug, Clone, clap::Args)]
struct Chosen {
    /// Ids as `list` prints them.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    ids: Vec<String>,
    /// Every dead letter (of --subject, if given).
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    which: Which,
}

#[derive(Debug, clap::Subcommand)]
enum DlqCommand {
    /// List the dead letters not yet redriven or purged.
    List(Which),
    /// Show one dead letter: its reason, headers and decoded event.
    Show {
        /// Its id, as `list` prints it (<domain>:<sequence>).
        id: String,
    },
    /// Publish dead letters again on their original subject (or --to) and
    /// remove them from the list.
    Redrive {
        #[command(flatten)]
        chosen: Chosen,
        /// Publish on this subject instead of the original one.
        #[arg(long, value_name = "SUBJECT")]
        to: Option<String>,
    },
    /// Remove dead letters from the list without publishing them.
    Purge {
        #[command(flatten)]
        chosen: Chosen,
    },
}

/// Runs the subcommand.
pub(crate) async fn run(args: DlqArgs) -> anyhow::Result<()> {
    if let DlqCommand::Redrive { to: Some(to), .. } = &args.command {
        subject::validate_subject(to).context("invalid --to")?;
    }
    let broker = super::connect(&args.broker.url).await?;
    let result = dispatch(&*broker, &args).await;
    broker.close().await;
    result
}

async fn dispatch(broker: &dyn Broker, args: &DlqArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match &args.command {
        DlqCommand::List(which) => {
            let all = Chosen {
                ids: Vec::new(),
                all: true,
                which: which.clone(),
            };
            let letters = select(broker, &all).await?;
            if args.output == Output::Pretty && letters.is_empty() {
                eprintln!("no dead letters");
            }
            for l in &letters {
                if !print_line(&mut out, &summary(l, args.output))? {
                    break;
                }
            }
        }
        DlqCommand::Show { id } => {
            let (domain, _) = split_id(id)?;
            let letters = dead_letter::list(broker, domain)
                .await
                .with_context(|| format!("reading the dead letters of {domain}"))?;
            let Some(letter) = letters.iter().find(|l| l.id() == *id) else {
                bail!("no dead letter {id} (redriven, purged, or never there)");
            };
            print_line(&mut out, &details(letter, args.output))?;
        }
        DlqCommand::Redrive { chosen, to } => {
            let letters = select(broker, chosen).await?;
            for (done, l) in letters.iter().enumerate() {
                let ack = dead_letter::redrive(broker, l, to.as_deref())
                    .await
                    .with_context(|| {
                        format!(
                            "redriving {} ({done} of {} redriven before it)",
                            l.id(),
                            letters.len()
                        )
                    })?;
                let subject = to.as_deref().unwrap_or(l.original_subject());
                let line = match args.output {
                    Output::Pretty => format!("redriven {} to {subject}", l.id()),
                    Output::Json => json!({
                        "id": l.id(),
                        "action": "redriven",
                        "subject": subject,
                        "sequence": ack.sequence,
                        "duplicate": ack.duplicate,
                    })
                    .to_string(),
                };
                print_line(&mut out, &line)?;
            }
        }
        DlqCommand::Purge { chosen } => {
            let letters = select(broker, chosen).await?;
            for (done, l) in letters.iter().enumerate() {
                dead_letter::purge(broker, l).await.with_context(|| {
                    format!(
                        "purging {} ({done} of {} purged before it)",
                        l.id(),
                        letters.len()
                    )
                })?;
                let line = match args.output {
                    Output::Pretty => format!("purged {}", l.id()),
                    Output::Json => json!({"id": l.id(), "action": "purged"}).to_string(),
                };
                print_line(&mut out, &line)?;
            }
        }
    }
    Ok(())
}

/// `<domain>:<rest>` of a dead letter's id.
fn split_id(id: &str) -> anyhow::Result<(&str, &str)> {
    match id.split_once(':') {
        Some((domain, rest)) if !domain.is_empty() && !rest.is_empty() => Ok((domain, rest)),
        _ => bail!(
            "{id:?} is not a dead-letter id (<domain>:<sequence>, as `sluice dlq list` prints)"
        ),
    }
}

/// The dead letters `chosen` names.
async fn select(broker: &dyn Broker, chosen: &Chosen) -> anyhow::Result<Vec<DeadLetter>> {
    let Chosen { ids, all, which } = chosen;
    let all = *all;
    let mut domains: Vec<String> = Vec::new();
    if all {
        match &which.subject {
            Some(filter) => {
                subject::validate_filter(filter).context("invalid --subject")?;
                domains.push(subject::stream_key(filter).to_owned());
            }
            None => domains.extend(crate::platform::SERVICES.iter().map(|s| (*s).to_owned())),
        }
    } else {
        for id in ids {
            let (domain, _) = split_id(id)?;
            if !domains.iter().any(|d| d == domain) {
                domains.push(domain.to_owned());
            }
        }
    }
    let mut letters = Vec::new();
    for domain in &domains {
        let found = dead_letter::list(broker, domain)
            .await
            .with_context(|| format!("reading the dead letters of {domain}"))?;
        letters.extend(found.into_iter().filter(|l| match &which.subject {
            Some(filter) => subject::matches(filter, l.original_subject()),
            None => true,
        }));
    }
    if !all {
        let mut chosen = Vec::new();
        for id in ids {
            match letters.iter().find(|l| l.id() == *id) {
                Some(l) => chosen.push(l.clone()),
                None => bail!(
                    "no dead letter {id} (redriven, purged, or never there): nothing was done"
                ),
            }
        }
        return Ok(chosen);
    }
    Ok(letters)
}

fn summary(l: &DeadLetter, output: Output) -> String {
    let h = &l.message.headers;
    match output {
        Output::Json => json!({
            "id": l.id(),
            "subject": l.original_subject(),
            "group": l.group(),
            "reason": l.reason(),
            "deliveries": l.deliveries(),
            "time": h.get(dead_letter::TIME),
            "ce_id": h.get("ce-id"),
            "ce_type": h.get("ce-type"),
        })
        .to_string(),
        Output::Pretty => format!(
            "{}  {}  group {}  {} deliveries  {}  {}",
            l.id(),
            l.original_subject(),
            l.group(),
            l.deliveries(),
            h.get(dead_letter::TIME).unwrap_or("-"),
            l.reason()
        ),
    }
}

fn details(l: &DeadLetter, output: Output) -> String {
    let registry = Registry::global().ok();
    let rendered = match registry {
        Some(r) => super::tail::render(r, &l.message, output),
        None => String::new(),
    };
    match output {
        Output::Json => {
            let mut value: serde_json::Value =
                serde_json::from_str(&rendered).unwrap_or_else(|_| json!({}));
            if let Some(fields) = value.as_object_mut() {
                fields.insert("id".into(), json!(l.id()));
                fields.insert("reason".into(), json!(l.reason()));
                fields.insert("group".into(), json!(l.group()));
                fields.insert("deliveries".into(), json!(l.deliveries()));
                fields.insert("original_subject".into(), json!(l.original_subject()));
            }
            value.to_string()
        }
        Output::Pretty => format!(
            "dead letter {}\nreason: {}\ngroup: {}\ndeliveries: {}\n{rendered}",
            l.id(),
            l.reason(),
            l.group(),
            l.deliveries()
        ),
    }
}
