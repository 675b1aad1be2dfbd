//! docker: every Dockerfile runs its final stage as a non-root user, pins its base images and
//! keeps secrets out of `ENV` and `ARG` (which end up in the image and its history).

use crate::check::registry::{Rule, Severity};
use crate::check::{Ctx, Finding};

pub(crate) const RULES: &[Rule] = &[
    Rule::new(
        "docker-non-root-user",
        Severity::Error,
        "The final stage of every Dockerfile switches to a non-root USER.",
        "End the final stage with `USER nonroot:nonroot` (or another non-zero uid).",
    )
    .security("6.0"),
    Rule::new(
        "docker-base-pinned",
        Severity::Error,
        "Every base image is pinned: a digest, or a tag with a version number; never latest or no tag.",
        "FROM rust:1.95.0-slim-bookworm, or FROM image:tag@sha256:<digest>.",
    )
    .security("5.0"),
    Rule::new(
        "docker-secret-in-env",
        Severity::Error,
        "No ENV or ARG carries a secret (password, token, key, secret): both are stored in the image.",
        "Use a BuildKit secret mount (RUN --mount=type=secret) at build time and inject secrets at run time.",
    )
    .security("8.0"),
];

const SECRET_WORDS: &[&str] = &[
    "PASSWORD",
    "PASSWD",
    "SECRET",
    "TOKEN",
    "PRIVATE_KEY",
    "API_KEY",
    "ACCESS_KEY",
];

/// Joins continuation lines: (first line number, instruction text).
fn instructions(text: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let mut cur: Option<(u32, String)> = None;
    for (i, l) in text.lines().enumerate() {
        let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let t = l.trim();
        if cur.is_none() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        let (start, mut acc) = cur.take().unwrap_or((n, String::new()));
        if let Some(body) = t.strip_suffix('\\') {
            acc.push_str(body);
            acc.push(' ');
            cur = Some((start, acc));
        } else {
            acc.push_str(t);
            out.push((start, acc));
        }
    }
    if let Some(c) = cur {
        out.push(c);
    }
    out
}

fn pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split_once(':')
        .is_some_and(|(_, tag)| tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()))
}

pub(crate) fn check(ctx: &Ctx, out: &mut Vec<Finding>) {
    for f in ctx.files_where(|p| {
        let name = p.rsplit('/').next().unwrap_or(p);
        name == "Dockerfile" || name.starts_with("Dockerfile.")
    }) {
        let mut stages: Vec<String> = Vec::new();
        let mut last_from = 0;
        let mut user: Option<(u32, String)> = None;
        for (line, ins) in instructions(&f.text) {
            let (op, rest) = ins.split_once(char::is_whitespace).unwrap_or((&ins, ""));
            let rest = rest.trim();
            match op.to_ascii_uppercase().as_str() {
                "FROM" => {
                    let words: Vec<&str> = rest
                        .split_whitespace()
                        .filter(|w| !w.starts_with("--"))
                        .collect();
                    let image = words.first().copied().unwrap_or("");
                    if let Some(i) = words.iter().position(|w| w.eq_ignore_ascii_case("AS"))
                        && let Some(s) = words.get(i + 1)
                    {
                        stages.push(s.to_ascii_lowercase());
                    }
                    let is_stage = stages
                        [..stages.len().saturating_sub(usize::from(words.len() > 2))]
                        .contains(&image.to_ascii_lowercase());
                    if image != "scratch" && !is_stage && !image.contains('$') && !pinned(image) {
                        out.push(Finding::new(
                            "docker-base-pinned",
                            &f.rel,
                            line,
                            format!("base image {image:?} is not pinned to a version or digest"),
                        ));
                    }
                    last_from = line;
                    user = None;
                }
                "USER" => user = Some((line, rest.to_owned())),
                "ENV" | "ARG" => {
                    // `ENV K=V K2=V2`, `ENV K V`, `ARG K[=V]`.
                    let keys: Vec<&str> = if rest.contains('=') {
                        rest.split_whitespace()
                            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
                            .chain(
                                rest.split_whitespace()
                                    .filter(|w| !w.contains('=') && op.eq_ignore_ascii_case("ARG")),
                            )
                            .collect()
                    } else {
                        rest.split_whitespace().take(1).collect()
                    };
                    for k in keys {
                        let up = k.to_ascii_uppercase();
                        if SECRET_WORDS.iter().any(|w| up.contains(w)) {
                            out.push(Finding::new(
                                "docker-secret-in-env",
                                &f.rel,
                                line,
                                format!(
                                    "{} {k} puts a secret into the image",
                                    op.to_ascii_uppercase()
                                ),
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        if last_from > 0 {
            let root = user.as_ref().is_none_or(|(_, u)| {
                let who = u.split(':').next().unwrap_or("");
                who == "root" || who == "0"
            });
            if root {
                out.push(Finding::new(
                    "docker-non-root-user",
                    &f.rel,
                    user.map_or(last_from, |(l, _)| l),
                    "the final stage runs as root: it has no USER, or USER root/0".to_owned(),
                ));
            }
        }
    }
}
