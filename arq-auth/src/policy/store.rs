//! Hot reload: a policy file checked before it replaces the running set atomically.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::source::{AttributeSource, NoAttributes};
use super::{Decision, PolicyError, PolicySet};

/// The running policy set, reloadable from its file.
///
/// Readers never block: each decision takes the current set (an atomic load); a reload compiles
/// the new file completely and swaps it in only if every rule checks. A bad file keeps the old
/// set and reports why.
///
/// # Example
///
/// ```no_run
/// # async fn demo() -> Result<(), arq_auth::policy::PolicyError> {
/// use arq_auth::policy::{NoAttributes, PolicyStore};
/// let store = PolicyStore::open("policies/abac.yaml")?;
/// let _watcher = store.watch(std::time::Duration::from_secs(5));
/// let d = store.authorize(&NoAttributes, "read:project", &NoAttributes);
/// assert!(!d.allowed());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PolicyStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    current: ArcSwap<PolicySet>,
    modified: Mutex<Option<SystemTime>>,
    last_error: Mutex<Option<PolicyError>>,
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl PolicyStore {
    /// Loads the policy file at `path`.
    ///
    /// # Errors
    /// The file cannot be read or does not check.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, PolicyError> {
        let path = path.into();
        let modified = mtime(&path);
        let set = PolicySet::from_file(&path)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                current: ArcSwap::from_pointee(set),
                modified: Mutex::new(modified),
                last_error: Mutex::new(None),
            }),
        })
    }

    /// A store over an already loaded set (reloads read `path`).
    pub fn from_set(path: impl Into<PathBuf>, set: PolicySet) -> Self {
        let path = path.into();
        Self {
            inner: Arc::new(Inner {
                modified: Mutex::new(mtime(&path)),
                path,
                current: ArcSwap::from_pointee(set),
                last_error: Mutex::new(None),
            }),
        }
    }

    /// The set decisions use right now.
    pub fn current(&self) -> Arc<PolicySet> {
        self.inner.current.load_full()
    }

    /// The error of the last failed reload, cleared by a successful one.
    pub fn last_error(&self) -> Option<PolicyError> {
        self.inner
            .last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or(None)
    }

    /// Reads and checks the file; on success swaps it in atomically.
    ///
    /// # Errors
    /// The new file does not check; the running set is unchanged.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let modified = mtime(&self.inner.path);
        match PolicySet::from_file(&self.inner.path) {
            Ok(set) => {
                self.inner.current.store(Arc::new(set));
                if let Ok(mut m) = self.inner.modified.lock() {
                    *m = modified;
                }
                if let Ok(mut e) = self.inner.last_error.lock() {
                    *e = None;
                }
                tracing::info!(target: "arq::policy", path = %self.inner.path.display(), "policy set reloaded");
                Ok(())
            }
            Err(err) => {
                if let Ok(mut m) = self.inner.modified.lock() {
                    *m = modified;
                }
                tracing::warn!(target: "arq::policy", path = %self.inner.path.display(), error = %err, "policy reload refused; keeping the running set");
                if let Ok(mut e) = self.inner.last_error.lock() {
                    *e = Some(err.clone());
                }
                Err(err)
            }
        }
    }

    /// Reloads if the file's modification time changed since the last (attempted) load.
    /// Returns whether a reload was attempted.
    pub fn reload_if_changed(&self) -> bool {
        let now = mtime(&self.inner.path);
        let changed = self
            .inner
            .modified
            .lock()
            .map(|m| *m != now)
            .unwrap_or(false);
        if changed {
            let _ = self.reload();
        }
        changed
    }

    /// Polls the file every `period` and reloads it when it changes. Abort the returned task to
    /// stop watching. Needs a Tokio runtime.
    pub fn watch(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                store.reload_if_changed();
            }
        })
    }

    /// Decides with the current set and no request attributes.
    pub fn authorize(
        &self,
        principal: &dyn AttributeSource,
        action: &str,
        resource: &dyn AttributeSource,
    ) -> Decision {
        self.authorize_with_request(principal, action, resource, &NoAttributes)
    }

    /// Decides with the current set.
    pub fn authorize_with_request(
        &self,
        principal: &dyn AttributeSource,
        action: &str,
        resource: &dyn AttributeSource,
        request: &dyn AttributeSource,
    ) -> Decision {
        self.inner
            .current
            .load()
            .decide(principal, action, resource, request)
    }
}
