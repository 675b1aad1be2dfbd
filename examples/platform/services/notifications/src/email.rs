//! `email.send`: validating a message, rendering it as an RFC 5322 message, and delivering it
//! through an [`EmailTransport`].
//!
//! The transport shipped is [`MailboxTransport`]: one `.eml` file per message in a directory
//! (`[email] mailbox_dir`), written to a hidden temporary file and renamed into place, named
//! after the message id so a redelivered message (same id) is recognised and not written again.
//!
//! # Why no SMTP transport yet
//! A real SMTP transport needs a client (e.g. `lettre`) with TLS, authentication and a decision
//! about which SMTP replies are permanent (5xx) or transient (4xx) — and a test against a real
//! SMTP server, which the development machine's services (`scripts/services`) do not run yet.
//! Shipping one without that test would be shipping something unproven, so the platform writes
//! to a mailbox directory, which a local run can read (and which an MTA's pickup directory can
//! consume). Adding SMTP means one more [`EmailTransport`] implementation; the handler, the
//! validation and the retry/dead-letter behaviour stay as they are.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use arq_queue::{HandlerError, Job, Message, MessageId, TenantId};
use base64::Engine;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The largest body accepted (a larger one can never be sent: a permanent failure).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The largest subject accepted, in characters.
pub const MAX_SUBJECT_CHARS: usize = 998;

/// A message on `email.send`, as the tasks service publishes it through its outbox (tenant and
/// trace travel in the envelope). Unknown fields are ignored, so producers can add fields first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendEmail {
    /// The recipient's address (`user@example.com`; no display name).
    pub to: String,
    /// The subject line: not blank; line breaks are folded into spaces.
    pub subject: String,
    /// The plain-text body.
    pub body: String,
    /// The task the message is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<Uuid>,
}

impl Message for SendEmail {
    const TYPE: &'static str = "email.send";
}

/// `[email]`: where mail goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    /// The sender, `Name <address>` or a bare address.
    pub from: String,
    /// The directory [`MailboxTransport`] writes one `.eml` file per message into (created at
    /// start-up if missing).
    pub mailbox_dir: PathBuf,
}

/// Whether `address` is a plain e-mail address: one `@`, a local part of 1–64 printable
/// characters without spaces, quotes or angle brackets, and a domain of at least two
/// dot-separated labels of letters, digits and hyphens (not starting or ending with one).
pub fn is_email_address(address: &str) -> bool {
    let Some((local, domain)) = address.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| {
            c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c) || !c.is_ascii()
        })
        && !local.chars().any(char::is_control);
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = domain.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    local_ok && domain_ok
}

/// A validated message, ready for a transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// The message id (the envelope's): the file name, the `Message-ID`, the dedup key.
    pub id: MessageId,
    /// The tenant it was sent for.
    pub tenant: TenantId,
    /// The sender.
    pub from: String,
    /// The recipient.
    pub to: String,
    /// The subject, on one line.
    pub subject: String,
    /// The body.
    pub body: String,
    /// The task it is about.
    pub task_id: Option<Uuid>,
}

impl Email {
    /// Validates `message`: why it can never be sent, if it cannot.
    pub fn new(
        id: MessageId,
        tenant: TenantId,
        from: &str,
        message: SendEmail,
    ) -> Result<Self, String> {
        let to = message.to.trim();
        if !is_email_address(to) {
            return Err(format!(
                "`to` is not an e-mail address: {:?} (expected user@example.com)",
                message.to
            ));
        }
        // Line breaks in a header would start new headers: fold every run of whitespace.
        let subject = message
            .subject
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if subject.is_empty() {
            return Err("`subject` is empty".to_owned());
        }
        if subject.chars().count() > MAX_SUBJECT_CHARS {
            return Err(format!(
                "`subject` is longer than {MAX_SUBJECT_CHARS} characters"
            ));
        }
        if subject.chars().any(char::is_control) {
            return Err("`subject` contains control characters".to_owned());
        }
        if message.body.len() > MAX_BODY_BYTES {
            return Err(format!(
                "`body` is larger than {MAX_BODY_BYTES} bytes ({} bytes)",
                message.body.len()
            ));
        }
        Ok(Self {
            id,
            tenant,
            from: from.to_owned(),
            to: to.to_owned(),
            subject,
            body: message.body,
            task_id: message.task_id,
        })
    }

    /// The domain of the sender's address, for the `Message-ID`.
    fn sender_domain(&self) -> &str {
        let address = self
            .from
            .rsplit_once('<')
            .map_or(self.from.as_str(), |(_, a)| a.trim_end_matches('>'));
        address
            .rsplit_once('@')
            .map_or("localhost", |(_, d)| d.trim())
    }

    /// The message as RFC 5322 text (CRLF line endings), dated `date`.
    ///
    /// A non-ASCII subject is an RFC 2047 encoded word; the body is UTF-8, sent `8bit` unless
    /// a line is longer than RFC 5322's 998 octets, then `base64`.
    pub fn to_rfc5322(&self, date: chrono::DateTime<chrono::Utc>) -> String {
        let subject = if self.subject.is_ascii() {
            self.subject.clone()
        } else {
            format!(
                "=?UTF-8?B?{}?=",
                base64::engine::general_purpose::STANDARD.encode(self.subject.as_bytes())
            )
        };
        let body = self.body.replace("\r\n", "\n").replace('\r', "\n");
        let long_line = body.lines().any(|l| l.len() > 998);
        let mut out = String::with_capacity(body.len() + 512);
        let mut header = |name: &str, value: &str| {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        };
        header("Date", &date.to_rfc2822());
        header("From", &self.from);
        header("To", &self.to);
        header("Subject", &subject);
        header(
            "Message-ID",
            &format!("<{}@{}>", self.id, self.sender_domain()),
        );
        header("MIME-Version", "1.0");
        header("Content-Type", "text/plain; charset=utf-8");
        header(
            "Content-Transfer-Encoding",
            if long_line { "base64" } else { "8bit" },
        );
        header("X-Arq-Tenant", &self.tenant.to_string());
        if let Some(task) = self.task_id {
            header("X-Arq-Task-Id", &task.to_string());
        }
        out.push_str("\r\n");
        if long_line {
            let encoded = base64::engine::general_purpose::STANDARD.encode(body.as_bytes());
            for chunk in encoded.as_bytes().chunks(76) {
                out.push_str(&String::from_utf8_lossy(chunk));
                out.push_str("\r\n");
            }
        } else {
            for line in body.lines() {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
        out
    }
}

/// What a transport did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// It was delivered now.
    Delivered,
    /// It had been delivered before (a redelivery of the same message id): nothing was done.
    AlreadyDelivered,
}

/// Why a transport could not deliver a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Delivery failed for a reason that may pass (I/O, a server unavailable): retried.
    #[error("e-mail delivery failed, will retry: {0}")]
    Unavailable(String),
    /// The transport refused the message for good: dead-lettered.
    #[error("e-mail delivery refused: {0}")]
    Rejected(String),
}

/// The future a transport returns.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<Sent, TransportError>> + Send + 'a>>;

/// Delivers validated messages. Delivery is at least once upstream, so a transport should
/// recognise a message id it already delivered ([`Sent::AlreadyDelivered`]).
pub trait EmailTransport: Send + Sync + 'static {
    /// Delivers `email`.
    fn send<'a>(&'a self, email: &'a Email) -> SendFuture<'a>;
}

/// Writes each message to `<dir>/<message id>.eml`.
#[derive(Debug, Clone)]
pub struct MailboxTransport {
    dir: PathBuf,
}

impl MailboxTransport {
    /// A mailbox in `dir`, created if missing; fails (saying which directory) when it cannot
    /// be created or written to.
    pub fn open(dir: impl Into<PathBuf>) -> anyhow::Result<Self> {
        use anyhow::Context;
        let dir = dir.into();
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "[email] mailbox_dir {}: cannot create the directory",
                dir.display()
            )
        })?;
        let probe = tempfile::Builder::new()
            .prefix(".probe-")
            .tempfile_in(&dir)
            .with_context(|| {
                format!(
                    "[email] mailbox_dir {}: cannot write to the directory",
                    dir.display()
                )
            })?;
        drop(probe);
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where message `id` is (or will be) written.
    pub fn path_of(&self, id: MessageId) -> PathBuf {
        self.dir.join(format!("{id}.eml"))
    }
}

impl EmailTransport for MailboxTransport {
    fn send<'a>(&'a self, email: &'a Email) -> SendFuture<'a> {
        Box::pin(async move {
            let path = self.path_of(email.id);
            let text = email.to_rfc5322(chrono::Utc::now());
            let dir = self.dir.clone();
            tokio::task::spawn_blocking(move || write_once(&dir, &path, text.as_bytes()))
                .await
                .map_err(|e| TransportError::Unavailable(format!("the writer task failed: {e}")))?
        })
    }
}

/// Writes `bytes` to `path` unless it exists: to a hidden temporary file in `dir` first, synced,
/// then renamed, so a reader never sees a partial message and a crash leaves no `.eml` behind.
/// The rename does not replace an existing file (`persist_noclobber`), so two workers racing on
/// the same message deliver it once.
fn write_once(dir: &Path, path: &Path, bytes: &[u8]) -> Result<Sent, TransportError> {
    let io = |what: &str, e: &dyn std::fmt::Display| {
        TransportError::Unavailable(format!("{what} {}: {e}", path.display()))
    };
    if path.exists() {
        return Ok(Sent::AlreadyDelivered);
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".eml")
        .tempfile_in(dir)
        .map_err(|e| io("cannot create a temporary file for", &e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| io("cannot write", &e))?;
    match tmp.persist_noclobber(path) {
        Ok(_) => Ok(Sent::Delivered),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(Sent::AlreadyDelivered),
        Err(e) => Err(io("cannot move the message into place as", &e.error)),
    }
}

/// Handles one `email.send` message: a message without a tenant or that fails validation is
/// a permanent failure (dead-lettered at once, with the reason); a transport failure is retried.
pub async fn handle(
    transport: &dyn EmailTransport,
    settings: &EmailSettings,
    job: Job<SendEmail>,
) -> Result<(), HandlerError> {
    let tenant = job.tenant.ok_or_else(|| {
        HandlerError::permanent("the message has no tenant; publish it with Envelope::with_tenant")
    })?;
    let email =
        Email::new(job.id, tenant, &settings.from, job.payload).map_err(HandlerError::permanent)?;
    match transport.send(&email).await {
        Ok(Sent::Delivered) => {
            tracing::info!(%tenant, id = %job.id, attempt = job.attempt, "e-mail delivered");
            Ok(())
        }
        Ok(Sent::AlreadyDelivered) => {
            tracing::info!(%tenant, id = %job.id, attempt = job.attempt, "e-mail already delivered (redelivery); nothing done");
            Ok(())
        }
        Err(e @ TransportError::Rejected(_)) => Err(HandlerError::permanent(e)),
        Err(e) => Err(HandlerError::retry(e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for ok in ["a@example.com", "first.last+tag@sub.example.co", "x@a-b.io"] {
            assert!(is_email_address(ok), "{ok}");
        }
        for bad in [
            "",
            "example.com",
            "@example.com",
            "a@",
            "a@localhost",
            "a b@example.com",
            "a@exa mple.com",
            "a@@example.com",
            "a@-example.com",
            "<a@example.com>",
            "a@example.com\r\nBcc: b@example.com",
            ".a@example.com",
            "a..b@example.com",
        ] {
            assert!(!is_email_address(bad), "{bad:?}");
        }
    }

    fn message(to: &str, subject: &str, body: &str) -> SendEmail {
        SendEmail {
            to: to.into(),
            subject: subject.into(),
            body: body.into(),
            task_id: None,
        }
    }

    fn email(m: SendEmail) -> Result<Email, String> {
        Email::new(
            MessageId::generate(),
            TenantId::generate(),
            "Platform <notifications@platform.example>",
            m,
        )
    }

    #[test]
    fn validation_says_what_is_wrong() {
        let err = email(message("nobody", "hi", "")).unwrap_err();
        assert!(err.starts_with("`to` is not an e-mail address"), "{err}");
        let err = email(message("a@example.com", " \r\n ", "")).unwrap_err();
        assert_eq!(err, "`subject` is empty");
        let big = "x".repeat(MAX_BODY_BYTES + 1);
        let err = email(message("a@example.com", "s", &big)).unwrap_err();
        assert!(err.starts_with("`body` is larger"), "{err}");
    }

    #[test]
    fn renders_rfc5322_without_header_injection() {
        let e = email(message(
            "a@example.com",
            "Hello\r\nBcc: victim@example.com",
            "line one\nline two",
        ))
        .unwrap();
        let date = chrono::DateTime::parse_from_rfc3339("2025-01-02T03:04:05Z")
            .unwrap()
            .to_utc();
        let text = e.to_rfc5322(date);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let headers: Vec<&str> = head.split("\r\n").collect();
        assert!(
            headers.contains(&"Date: Thu, 2 Jan 2025 03:04:05 +0000"),
            "{head}"
        );
        assert!(
            headers.contains(&"Subject: Hello Bcc: victim@example.com"),
            "{head}"
        );
        assert!(!headers.iter().any(|h| h.starts_with("Bcc:")), "{head}");
        let id = format!("Message-ID: <{}@platform.example>", e.id);
        assert!(headers.contains(&id.as_str()), "{head}");
        assert!(
            headers.contains(&"Content-Transfer-Encoding: 8bit"),
            "{head}"
        );
        assert_eq!(body, "line one\r\nline two\r\n");
    }

    #[test]
    fn non_ascii_subject_is_an_encoded_word_and_long_lines_are_base64() {
        let e = email(message("a@example.com", "Grüße", &"y".repeat(2000))).unwrap();
        let text = e.to_rfc5322(chrono::Utc::now());
        assert!(
            text.contains("Subject: =?UTF-8?B?R3LDvMOfZQ==?=\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Transfer-Encoding: base64\r\n"));
        assert!(text.split("\r\n").all(|l| l.len() <= 998));
    }

    #[tokio::test]
    async fn the_mailbox_writes_a_message_once() {
        let dir = tempfile::tempdir().unwrap();
        let mailbox = MailboxTransport::open(dir.path().join("mail")).unwrap();
        let e = email(message("a@example.com", "s", "b")).unwrap();
        assert_eq!(mailbox.send(&e).await.unwrap(), Sent::Delivered);
        let first = std::fs::read(mailbox.path_of(e.id)).unwrap();
        assert_eq!(mailbox.send(&e).await.unwrap(), Sent::AlreadyDelivered);
        assert_eq!(std::fs::read(mailbox.path_of(e.id)).unwrap(), first);
        let names: Vec<String> = std::fs::read_dir(mailbox.dir())
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [format!("{}.eml", e.id)],
            "no temporary file is left"
        );
    }
}
