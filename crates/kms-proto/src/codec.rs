//! The codec of every `kms.v1` service: prost's, except that a message that does not decode
//! is the caller's fault, INVALID_ARGUMENT with reason ValidationException, where tonic's
//! prost codec says INTERNAL.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::ProstEncoder;
use tonic_types::{ErrorDetails, StatusExt as _};

/// The `google.rpc.ErrorInfo` domain of every error of the API.
pub const ERROR_DOMAIN: &str = "kms";

/// prost's encoding, and decoding with the caller's errors told as such.
#[derive(Debug, Clone)]
pub struct KmsCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for KmsCodec<T, U> {
    fn default() -> Self {
        KmsCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for KmsCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = KmsDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        KmsDecoder { _pd: PhantomData }
    }
}

/// Decodes `U`; bytes that are not one is INVALID_ARGUMENT (ValidationException).
#[derive(Debug)]
pub struct KmsDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for KmsDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|error| {
            Status::with_error_details(
                Code::InvalidArgument,
                format!("the message is not a valid kms.v1 message: {error}"),
                ErrorDetails::with_error_info(
                    "ValidationException",
                    ERROR_DOMAIN,
                    std::collections::HashMap::new(),
                ),
            )
        })
    }
}
