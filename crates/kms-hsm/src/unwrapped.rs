//! The unwrapped key versions: session objects of one dedicated session that stays open
//! (session objects die with the session that made them, and serve every session of the
//! process meanwhile), bounded in number; the oldest is destroyed when a new one comes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use kms_core::{KeyId, KeyVersionRef};

use crate::domain::Domain;
use crate::object_id::ObjectKind;

/// The unwrapped key versions: session objects of `holder`, the oldest destroyed past the
/// capacity. Made afresh (the old objects gone with their session) when the connection's
/// generation changes.
pub(crate) struct Unwrapped {
    /// The session the objects live in; `None` until first needed.
    pub(crate) holder: Option<Session>,
    /// The connection generation `holder` belongs to.
    pub(crate) generation: u64,
    /// The domains found, by version, as handles of `holder`.
    pub(crate) domains: HashMap<u32, Domain>,
    /// The unwrapped objects.
    pub(crate) handles: Handles,
}

/// Unwrapped objects by key version and kind, oldest first. A caller holds an object's
/// [`Arc`] while it uses the handle; an object evicted or forgotten meanwhile waits in the
/// graveyard until no one holds it, so a handle is never destroyed (and its number perhaps
/// reused by the module for another key) under a call that is using it.
pub(crate) struct Handles {
    objects: HashMap<(KeyVersionRef, ObjectKind), Arc<ObjectHandle>>,
    order: VecDeque<(KeyVersionRef, ObjectKind)>,
    graveyard: Vec<Arc<ObjectHandle>>,
    capacity: usize,
}

impl Unwrapped {
    /// An empty cache of at most `capacity` objects (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Unwrapped {
            holder: None,
            generation: 0,
            domains: HashMap::new(),
            handles: Handles {
                objects: HashMap::new(),
                order: VecDeque::new(),
                graveyard: Vec::new(),
                capacity: capacity.max(1),
            },
        }
    }

    /// Forgets the unwrapped objects of `key` (see [`Handles::forget`]).
    pub(crate) fn forget(&mut self, key: KeyVersionRef) {
        self.handles.forget(self.holder.as_ref(), key);
    }

    /// Forgets the unwrapped objects of every version of `key_id`.
    pub(crate) fn forget_key(&mut self, key_id: KeyId) {
        self.handles.forget_key(self.holder.as_ref(), key_id);
    }

    /// Closes the holding session (its objects go with it) and forgets everything.
    pub(crate) fn reset(&mut self) {
        if let Some(holder) = self.holder.take() {
            // A dead session fails to close; its objects are gone either way.
            let _ = holder.close();
        }
        self.domains.clear();
        self.handles.objects.clear();
        self.handles.order.clear();
        self.handles.graveyard.clear();
    }
}

impl Handles {
    /// The object of `key`'s material of `kind`, if it is unwrapped: hold it while using it.
    pub(crate) fn get(&self, key: KeyVersionRef, kind: ObjectKind) -> Option<Arc<ObjectHandle>> {
        self.objects.get(&(key, kind)).cloned()
    }

    /// Keeps `handle`; the oldest objects past the capacity go to the graveyard.
    pub(crate) fn insert(
        &mut self,
        holder: Option<&Session>,
        key: KeyVersionRef,
        kind: ObjectKind,
        handle: ObjectHandle,
    ) -> Arc<ObjectHandle> {
        let handle = Arc::new(handle);
        if let Some(old) = self.objects.insert((key, kind), Arc::clone(&handle)) {
            self.graveyard.push(old);
        } else {
            self.order.push_back((key, kind));
        }
        while self.objects.len() > self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(old) = self.objects.remove(&oldest) {
                self.graveyard.push(old);
            }
        }
        self.bury(holder);
        handle
    }

    /// Forgets the unwrapped objects of `key`: they are destroyed once no call uses them (a
    /// deleted key's material must not stay usable).
    pub(crate) fn forget(&mut self, holder: Option<&Session>, key: KeyVersionRef) {
        self.order.retain(|(k, _)| *k != key);
        let gone: Vec<_> = self
            .objects
            .keys()
            .filter(|(k, _)| *k == key)
            .copied()
            .collect();
        for entry in gone {
            if let Some(old) = self.objects.remove(&entry) {
                self.graveyard.push(old);
            }
        }
        self.bury(holder);
    }

    /// Destroys, in `holder`, the forgotten objects no call holds any more.
    fn bury(&mut self, holder: Option<&Session>) {
        let Some(holder) = holder else {
            return;
        };
        self.graveyard.retain(|handle| {
            if Arc::strong_count(handle) > 1 {
                return true;
            }
            // A failure leaves a session object that goes with its session.
            let _ = holder.destroy_object(**handle);
            false
        });
    }

    /// Forgets the unwrapped objects of every version of `key_id`, as [`Handles::forget`].
    pub(crate) fn forget_key(&mut self, holder: Option<&Session>, key_id: KeyId) {
        let versions: Vec<KeyVersionRef> = self
            .objects
            .keys()
            .filter(|(k, _)| k.key_id == key_id)
            .map(|(k, _)| *k)
            .collect();
        for version in versions {
            self.forget(holder, version);
        }
    }

    /// How many versions are unwrapped.
    pub(crate) fn len(&self) -> usize {
        self.objects.len()
    }
}
