//! A bounded pool of logged-in read-write sessions.
//!
//! Sessions are `Send` but not `Sync`: each is lent to one thread at a time. A caller that
//! finds every session busy waits until one is returned.

use std::ops::Deref;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

struct State {
    idle: Vec<Session>,
    open: usize,
}

/// Why no session could be had.
#[derive(Debug)]
pub(crate) enum GetError {
    /// Every session stayed busy for the whole wait.
    Timeout,
    /// Opening or logging in a new session failed.
    Open(CkError),
}

pub(crate) struct SessionPool {
    pkcs11: Pkcs11,
    slot: Slot,
    pin: AuthPin,
    max: usize,
    wait: Duration,
    state: Mutex<State>,
    returned: Condvar,
}

impl SessionPool {
    pub(crate) fn new(
        pkcs11: Pkcs11,
        slot: Slot,
        pin: AuthPin,
        max: usize,
        wait: Duration,
    ) -> Self {
        SessionPool {
            pkcs11,
            slot,
            pin,
            max,
            wait,
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle session, a new one if fewer than `max` are open, or the next one returned
    /// within the pool's wait.
    pub(crate) fn get(&self) -> Result<PooledSession<'_>, GetError> {
        let deadline = Instant::now() + self.wait;
        let mut state = self.lock();
        loop {
            if let Some(session) = state.idle.pop() {
                return Ok(PooledSession {
                    pool: self,
                    session: Some(session),
                });
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                return match self.open_session() {
                    Ok(session) => Ok(PooledSession {
                        pool: self,
                        session: Some(session),
                    }),
                    Err(e) => {
                        self.lock().open -= 1;
                        self.returned.notify_one();
                        Err(GetError::Open(e))
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(GetError::Timeout);
            }
            state = self
                .returned
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Closes every idle session: after one session was found dead, the others (opened
    /// before the same HSM restart) are likely dead too, and a retry must get a fresh one.
    pub(crate) fn close_idle(&self) {
        let idle = {
            let mut state = self.lock();
            state.open -= state.idle.len();
            std::mem::take(&mut state.idle)
        };
        for session in idle {
            // A dead session fails to close; there is nothing more to do with it.
            let _ = session.close();
        }
        self.returned.notify_all();
    }

    /// The pool's use now.
    pub(crate) fn stats(&self) -> crate::SessionStats {
        let state = self.lock();
        crate::SessionStats {
            open: state.open,
            in_use: state.open - state.idle.len(),
            max: self.max,
            connected: true,
        }
    }

    /// Logs out, closes every session and finalises the module. The caller makes sure no
    /// session is lent (the pool is borrowed by every lent session, so owning it proves it).
    pub(crate) fn close(self) -> crate::Closed {
        let idle = std::mem::take(&mut self.lock().idle);
        let sessions = idle.len();
        if let Some(first) = idle.first() {
            // Login state belongs to the application, not the session: one logout ends it.
            let _ = first.logout();
        }
        for session in idle {
            // A dead session fails to close; C_Finalize below closes what is left.
            let _ = session.close();
        }
        let finalized = self.pkcs11.finalize().is_ok();
        crate::Closed {
            sessions,
            finalized,
        }
    }

    /// The mechanisms the token's slot offers.
    pub(crate) fn mechanisms(&self) -> Result<Vec<cryptoki::mechanism::MechanismType>, CkError> {
        self.pkcs11.get_mechanism_list(self.slot)
    }

    /// A logged-in session of its own, outside the pool: the one that holds unwrapped key
    /// versions, which live as long as it does.
    pub(crate) fn open_dedicated(&self) -> Result<Session, CkError> {
        self.open_session()
    }

    fn open_session(&self) -> Result<Session, CkError> {
        let session = self.pkcs11.open_rw_session(self.slot)?;
        // Login state is shared by every session of the application: the second and later
        // sessions find the user already logged in.
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(e) => Err(e),
        }
    }
}

/// A session lent by the pool; it goes back when dropped, unless discarded.
pub(crate) struct PooledSession<'a> {
    pool: &'a SessionPool,
    session: Option<Session>,
}

impl PooledSession<'_> {
    /// Closes the session instead of returning it (it is broken).
    pub(crate) fn discard(mut self) {
        if let Some(session) = self.session.take() {
            // Closing a dead session fails; there is nothing more to do with it.
            let _ = session.close();
        }
        self.pool.lock().open -= 1;
        self.pool.returned.notify_one();
    }
}

impl Deref for PooledSession<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        // Invariant: `session` is `Some` until `discard` or `drop` takes it.
        match &self.session {
            Some(session) => session,
            None => unreachable!("a pooled session is used after being discarded"),
        }
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.pool.lock().idle.push(session);
            self.pool.returned.notify_one();
        }
    }
}
