package aws

import (
	"context"
	"errors"

	sdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	kmstypes "github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/straitmesh/strait/trust/keywrap"
)

// KMSService names envelopes made with KMS.
const KMSService = "aws-kms"

// KMS is a keywrap.KeyService on an AWS KMS key: the site CA's
// key-encryption key is sealed under data keys that only this KMS key
// decrypts, with an encryption context naming the site. Servers need
// kms:GenerateDataKey and kms:Decrypt on the key.
type KMS struct {
	client *kms.Client
	keyID  string
}

var _ keywrap.KeyService = (*KMS)(nil)

// NewKMS uses keyID (a key ID, ARN, or alias/NAME).
func NewKMS(c *Clients, keyID string) (*KMS, error) {
	if keyID == "" {
		return nil, errors.New("aws kms_key_id: empty")
	}
	return &KMS{client: c.KMS, keyID: keyID}, nil
}

// GenerateDataKey implements keywrap.KeyService.
func (k *KMS) GenerateDataKey(ctx context.Context, encContext map[string]string) ([]byte, []byte, string, error) {
	out, err := k.client.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{
		KeyId: sdk.String(k.keyID), KeySpec: kmstypes.DataKeySpecAes256, EncryptionContext: encContext})
	if err != nil {
		return nil, nil, "", err
	}
	return out.Plaintext, out.CiphertextBlob, sdk.ToString(out.KeyId), nil
}

// Decrypt implements keywrap.KeyService. The key is named too, so that a
// blob made under another key is refused rather than decrypted.
func (k *KMS) Decrypt(ctx context.Context, ciphertext []byte, encContext map[string]string) ([]byte, error) {
	out, err := k.client.Decrypt(ctx, &kms.DecryptInput{KeyId: sdk.String(k.keyID), CiphertextBlob: ciphertext, EncryptionContext: encContext})
	if err != nil {
		return nil, err
	}
	return out.Plaintext, nil
}
