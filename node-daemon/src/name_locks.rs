//! One operation at a time per sliver name: every operation on a sliver (define, change,
//! start, stop, delete, converge) holds its name's lock from its first check to its last
//! write, so no reply is made false by another request on the same name meanwhile.
//! Operations on different names run in parallel. A name's lock exists only while someone
//! holds or waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

type Locks = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

/// The locks of the names in use.
#[derive(Debug, Default)]
pub struct NameLocks {
    locks: Arc<Locks>,
}

/// A held name lock; dropping it lets the next operation on the name go.
#[derive(Debug)]
pub struct NameGuard {
    name: String,
    locks: Arc<Locks>,
    guard: Option<OwnedMutexGuard<()>>,
}

fn lock_map(
    locks: &Locks,
) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
    locks.lock().unwrap_or_else(|p| p.into_inner())
}

impl NameLocks {
    fn entry(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock_map(&self.locks)
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    fn guard(&self, name: &str, guard: OwnedMutexGuard<()>) -> NameGuard {
        NameGuard {
            name: name.to_string(),
            locks: self.locks.clone(),
            guard: Some(guard),
        }
    }

    /// Wait for `name`'s lock. A wait given up (the future dropped) leaves no entry behind.
    pub async fn lock(&self, name: &str) -> NameGuard {
        /// Forgets the name's entry when dropped, if nobody else holds or waits for it.
        struct Waiting<'a>(&'a NameLocks, &'a str);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.forget_if_unused(self.1);
            }
        }
        let entry = self.entry(name);
        let waiting = Waiting(self, name);
        let guard = entry.lock_owned().await;
        drop(waiting); // held now: nothing to forget
        self.guard(name, guard)
    }

    /// `name`'s lock if nobody holds it now.
    pub fn try_lock(&self, name: &str) -> Option<NameGuard> {
        let guard = self.entry(name).try_lock_owned().ok();
        match guard {
            Some(g) => Some(self.guard(name, g)),
            None => {
                // Drop the entry again if it was made for this try alone.
                self.forget_if_unused(name);
                None
            }
        }
    }

    fn forget_if_unused(&self, name: &str) {
        forget_if_unused(&self.locks, name);
    }

    /// How many names have a lock now (held or waited for).
    pub fn len(&self) -> usize {
        lock_map(&self.locks).len()
    }

    /// Whether no name has a lock now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Remove `name`'s lock from the map when nobody holds or waits for it.
fn forget_if_unused(locks: &Locks, name: &str) {
    let mut map = lock_map(locks);
    if map.get(name).is_some_and(|m| Arc::strong_count(m) == 1) {
        map.remove(name);
    }
}

impl Drop for NameGuard {
    fn drop(&mut self) {
        // Release first, so the count below sees only waiters.
        drop(self.guard.take());
        forget_if_unused(&self.locks, &self.name);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_holder_per_name_and_names_are_independent() {
        let locks = Arc::new(NameLocks::default());
        let a = locks.lock("a").await;
        assert!(locks.try_lock("a").is_none(), "a is held");
        let b = locks.try_lock("b").expect("b is free");
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.lock("a").await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the second holder waits");
        drop(a);
        let a2 = waiter.await.expect("join");
        drop((a2, b));
        assert!(locks.is_empty(), "no lock outlives its holders");
    }
}
