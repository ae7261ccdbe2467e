//! Bring your own key: import parameters, importing wrapped material, and deleting it.

use kms_proto::v1 as pb;

use crate::{ClientError, KmsClient};

impl KmsClient {
    /// A wrapping public key and an import token for an EXTERNAL key.
    pub async fn get_parameters_for_import(
        &mut self,
        key_id: &str,
        algorithm: pb::WrappingAlgorithm,
        wrapping_key_spec: pb::WrappingKeySpec,
    ) -> Result<pb::GetParametersForImportResponse, ClientError> {
        Ok(self
            .inner
            .get_parameters_for_import(pb::GetParametersForImportRequest {
                key_id: key_id.to_owned(),
                wrapping_algorithm: algorithm.into(),
                wrapping_key_spec: wrapping_key_spec.into(),
            })
            .await?
            .into_inner())
    }

    /// Imports wrapped key material into an EXTERNAL key.
    pub async fn import_key_material(
        &mut self,
        request: pb::ImportKeyMaterialRequest,
    ) -> Result<(), ClientError> {
        self.inner.import_key_material(request).await?;
        Ok(())
    }

    /// Destroys an EXTERNAL key's material; the key becomes PendingImport.
    pub async fn delete_imported_key_material(&mut self, key_id: &str) -> Result<(), ClientError> {
        self.inner
            .delete_imported_key_material(pb::DeleteImportedKeyMaterialRequest {
                key_id: key_id.to_owned(),
            })
            .await?;
        Ok(())
    }
}
