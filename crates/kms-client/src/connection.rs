//! Connecting: plaintext to a `kmsd --dev`, or mutual TLS ([`ClientTls`]).

use kms_proto::v1::key_management_service_client::KeyManagementServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use zeroize::Zeroizing;

use crate::{ClientError, KmsClient};

/// What a client needs for mutual TLS, as PEM.
pub struct ClientTls {
    /// The CA that issued kmsd's certificate.
    pub ca_pem: Vec<u8>,
    /// The client certificate chain and its private key; `None` connects without one (which
    /// kmsd refuses, with UNAUTHENTICATED).
    pub identity: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
    /// The name to check kmsd's certificate against, when not the endpoint's host.
    pub domain: Option<String>,
}

impl KmsClient {
    /// Connects to `endpoint` without TLS, e.g. `http://127.0.0.1:50051` (a `kmsd --dev`).
    pub async fn connect(endpoint: &str) -> Result<Self, ClientError> {
        Self::connect_with(endpoint, None).await
    }

    /// Connects to `endpoint`; with `tls`, over TLS (`https://…`), showing the client
    /// certificate if `tls` has one.
    pub async fn connect_with(
        endpoint: &str,
        tls: Option<&ClientTls>,
    ) -> Result<Self, ClientError> {
        let error = |source| ClientError::Connect {
            endpoint: endpoint.to_owned(),
            source,
        };
        let mut builder = Endpoint::from_shared(endpoint.to_owned()).map_err(error)?;
        if let Some(tls) = tls {
            let mut config =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key.as_slice()));
            }
            if let Some(domain) = &tls.domain {
                config = config.domain_name(domain.clone());
            }
            builder = builder.tls_config(config).map_err(error)?;
        }
        let channel = builder.connect().await.map_err(error)?;
        Ok(Self::from_channel(channel))
    }

    /// A client on an open channel (which other clients, e.g. grpc.health.v1, may share).
    pub fn from_channel(channel: Channel) -> Self {
        KmsClient {
            inner: KeyManagementServiceClient::new(channel),
        }
    }

    /// The generated client, for requests this wrapper does not shape.
    pub fn raw(&mut self) -> &mut KeyManagementServiceClient<Channel> {
        &mut self.inner
    }
}
