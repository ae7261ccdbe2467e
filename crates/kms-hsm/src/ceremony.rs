//! The domain-key ceremony: the token's security officer (or, on an HSM whose administrator
//! marks a user's key CKA_TRUSTED, the user) makes the wrap key of a trusted domain, outside
//! kmsd, which never holds the SO PIN. See the README's key hierarchy.

use std::path::Path;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use crate::OpenError;
use crate::connect::find_token;
use crate::domain::{self, DomainKeyMaker};

/// Why the ceremony did not make the key.
#[derive(Debug, thiserror::Error)]
pub enum CeremonyError {
    /// The module or token could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The login as the security officer (or user) failed.
    #[error("cannot log in to the token: {0}")]
    Login(CkError),
    /// The token already holds the key.
    #[error("domain key {version}: {why}")]
    Refused {
        /// The domain version.
        version: u32,
        /// Why.
        why: &'static str,
    },
    /// The module failed to make it.
    #[error("the HSM could not make domain key {version}: {source}")]
    Failed {
        /// The domain version.
        version: u32,
        /// The module's error.
        source: CkError,
    },
}

/// What the ceremony makes: the wrap key of trusted domain `version` of the kmsd instance
/// `namespace`, by `maker`, wrapping with `mechanism`.
#[derive(Clone, Copy, Debug)]
pub struct DomainKeyRequest {
    /// The kmsd instance id (its store's).
    pub namespace: [u8; 16],
    /// The domain version.
    pub version: u32,
    /// Who logs in and makes it.
    pub maker: DomainKeyMaker,
    /// The mechanism it wraps with (CKM_AES_KEY_WRAP_PAD, or a vendor's).
    pub mechanism: MechanismType,
}

/// Makes the domain key `request` names on the token labelled `token_label` of `module`,
/// logged in with `pin`. kmsd makes the domain's authenticator key itself when it first uses
/// the domain.
pub fn make_domain_key(
    module: &Path,
    token_label: &str,
    pin: &Zeroizing<String>,
    request: DomainKeyRequest,
) -> Result<(), CeremonyError> {
    let pkcs11 = Pkcs11::new(module).map_err(|source| OpenError::Module {
        path: module.to_path_buf(),
        source,
    })?;
    // Finalised at the end only if initialised here: C_Finalize ends every user of the
    // module in the process.
    let initialized_here =
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => true,
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => false,
            Err(source) => return Err(OpenError::Initialize(source).into()),
        };
    let made = make_in(&pkcs11, token_label, pin, request);
    if initialized_here {
        let _ = pkcs11.finalize();
    }
    made
}

fn make_in(
    pkcs11: &Pkcs11,
    token_label: &str,
    pin: &Zeroizing<String>,
    request: DomainKeyRequest,
) -> Result<(), CeremonyError> {
    let DomainKeyRequest {
        namespace,
        version,
        maker,
        mechanism,
    } = request;
    let slot = find_token(pkcs11, token_label, None)?;
    let session = pkcs11
        .open_rw_session(slot)
        .map_err(|e| CeremonyError::Open(OpenError::Login(e)))?;
    let user = match maker {
        DomainKeyMaker::SecurityOfficer => UserType::So,
        DomainKeyMaker::User => UserType::User,
    };
    session
        .login(user, Some(&AuthPin::from(pin.as_str())))
        .map_err(CeremonyError::Login)?;
    let made = domain::create_trusted_domain_key(&session, namespace, version, maker, mechanism);
    let _ = session.logout();
    match made {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(why)) => Err(CeremonyError::Refused { version, why }),
        Err(source) => Err(CeremonyError::Failed { version, source }),
    }
}
