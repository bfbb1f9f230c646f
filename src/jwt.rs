//! The signatures of every JWT the server makes or checks: its HS256 access tokens, the ES256
//! tokens of Web Push (VAPID) and APNs, and FCM's RS256 assertion. jsonwebtoken does the JWT
//! part; the signatures are ring's (already here for TLS), through jsonwebtoken's
//! `CryptoProvider`. Its own `rust_crypto` backend brings the `rsa` crate, whose private-key
//! operations leak timing (RUSTSEC-2023-0071, the Marvin attack); ring's RSA does not.
//!
//! Only the three algorithms above are served; any other is refused as jsonwebtoken refuses an
//! unknown one (a token of ours pins its algorithm anyway).

use std::sync::Once;

use jsonwebtoken::{
    Algorithm, DecodingKey, DecodingKeyKind, EncodingKey,
    crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils},
    errors::{Error, ErrorKind},
    signature,
};
use ring::{
    hmac,
    rand::SystemRandom,
    signature::{
        ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair,
        RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair, UnparsedPublicKey,
    },
};

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    // JWKs are never read or made here.
    key_utils: KeyUtils::new_unimplemented(),
};

/// Makes ring jsonwebtoken's provider for this process. Every type that holds a JWT key calls
/// it when made, before its first signature; later calls do nothing.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Refused only if a provider is installed already, which is then ours.
        let _ = PROVIDER.install_default();
    });
}

/// An RSA private key in PKCS#8 DER (as a service account's `private_key` holds it) turned
/// into the PKCS#1 DER that `EncodingKey::from_rsa_der` takes; `None` if it is not a
/// well-formed RSA key of at least 2048 bits.
pub fn rsa_pkcs1_from_pkcs8(pkcs8: &[u8]) -> Option<Vec<u8>> {
    RsaKeyPair::from_pkcs8(pkcs8).ok()?;
    let info = p256::pkcs8::PrivateKeyInfo::try_from(pkcs8).ok()?;
    Some(info.private_key.to_vec())
}

/// An RSA private key in PKCS#1 DER, if ring takes it (well-formed, at least 2048 bits).
pub fn is_rsa_pkcs1(der: &[u8]) -> bool {
    RsaKeyPair::from_der(der).is_ok()
}

enum SigningKey {
    Hmac(hmac::Key),
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

struct Signer {
    algorithm: Algorithm,
    key: SigningKey,
}

fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    let der = key.as_bytes();
    let key = match algorithm {
        Algorithm::HS256 => SigningKey::Hmac(hmac::Key::new(hmac::HMAC_SHA256, der)),
        Algorithm::ES256 => SigningKey::Ecdsa(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
                .map_err(|_| ErrorKind::InvalidEcdsaKey)?,
        ),
        Algorithm::RS256 => SigningKey::Rsa(
            RsaKeyPair::from_der(der).map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?,
        ),
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(Box::new(Signer {
        algorithm: *algorithm,
        key,
    }))
}

impl signature::Signer<Vec<u8>> for Signer {
    fn try_sign(&self, message: &[u8]) -> Result<Vec<u8>, signature::Error> {
        match &self.key {
            SigningKey::Hmac(key) => Ok(hmac::sign(key, message).as_ref().to_vec()),
            SigningKey::Ecdsa(key) => key
                .sign(&SystemRandom::new(), message)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| signature::Error::new()),
            SigningKey::Rsa(key) => {
                let mut signature = vec![0; key.public().modulus_len()];
                key.sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    message,
                    &mut signature,
                )
                .map_err(|_| signature::Error::new())?;
                Ok(signature)
            }
        }
    }
}

impl JwtSigner for Signer {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

enum VerifyingKey {
    Hmac(hmac::Key),
    /// An uncompressed P-256 point, or an RSA public key in PKCS#1 DER.
    Public(UnparsedPublicKey<Vec<u8>>),
}

struct Verifier {
    algorithm: Algorithm,
    key: VerifyingKey,
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    let DecodingKeyKind::SecretOrDer(der) = key.kind() else {
        return Err(ErrorKind::InvalidKeyFormat.into());
    };
    let key = match algorithm {
        Algorithm::HS256 => VerifyingKey::Hmac(hmac::Key::new(hmac::HMAC_SHA256, der)),
        Algorithm::ES256 => VerifyingKey::Public(UnparsedPublicKey::new(
            &ECDSA_P256_SHA256_FIXED,
            der.clone(),
        )),
        Algorithm::RS256 => VerifyingKey::Public(UnparsedPublicKey::new(
            &RSA_PKCS1_2048_8192_SHA256,
            der.clone(),
        )),
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(Box::new(Verifier {
        algorithm: *algorithm,
        key,
    }))
}

impl signature::Verifier<Vec<u8>> for Verifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        match &self.key {
            // Constant time.
            VerifyingKey::Hmac(key) => hmac::verify(key, message, signature),
            VerifyingKey::Public(key) => key.verify(message, signature),
        }
        .map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Verifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{Header, Validation};
    use serde_json::{Value, json};

    use super::*;

    fn roundtrip(algorithm: Algorithm, signing: &EncodingKey, checking: &DecodingKey) {
        install();
        let claims = json!({"sub": "someone", "exp": 4_000_000_000_i64});
        let token = jsonwebtoken::encode(&Header::new(algorithm), &claims, signing).expect("signs");
        let validation = Validation::new(algorithm);
        let read = jsonwebtoken::decode::<Value>(&token, checking, &validation).expect("checks");
        assert_eq!(read.claims, claims);

        // One bit of the payload changed: refused.
        let (head, rest) = token.split_once('.').expect("a JWT");
        let (payload, signature) = rest.split_once('.').expect("a JWT");
        let mut bytes = payload.as_bytes().to_vec();
        bytes[3] ^= 1;
        let forged = format!("{head}.{}.{signature}", String::from_utf8_lossy(&bytes));
        assert!(jsonwebtoken::decode::<Value>(&forged, checking, &validation).is_err());
    }

    #[test]
    fn hs256_signs_and_checks_and_refuses_another_secret() {
        let key = b"a secret of at least thirty-two bytes!";
        roundtrip(
            Algorithm::HS256,
            &EncodingKey::from_secret(key),
            &DecodingKey::from_secret(key),
        );
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"exp": 4_000_000_000_i64}),
            &EncodingKey::from_secret(key),
        )
        .expect("signs");
        let other = DecodingKey::from_secret(b"another secret of thirty-two bytes...");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        assert!(jsonwebtoken::decode::<Value>(&token, &other, &validation).is_err());
    }

    #[test]
    fn es256_signs_what_the_public_point_checks() {
        use p256::pkcs8::EncodePrivateKey;
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let der = secret.to_pkcs8_der().expect("pkcs8");
        let point = secret.public_key().to_sec1_bytes();
        roundtrip(
            Algorithm::ES256,
            &EncodingKey::from_ec_der(der.as_bytes()),
            &DecodingKey::from_ec_der(&point),
        );
    }

    #[test]
    fn rs256_signs_what_the_public_key_checks() {
        let pem = include_str!("../tests/fixtures/fcm-test-key.pem");
        let (_, pkcs8) = p256::pkcs8::der::pem::decode_vec(pem.as_bytes()).expect("pem");
        let pkcs1 = rsa_pkcs1_from_pkcs8(&pkcs8).expect("an RSA key");
        assert!(is_rsa_pkcs1(&pkcs1));
        let public = RsaKeyPair::from_pkcs8(&pkcs8).expect("ring reads it");
        roundtrip(
            Algorithm::RS256,
            &EncodingKey::from_rsa_der(&pkcs1),
            &DecodingKey::from_rsa_der(public.public().as_ref()),
        );
    }

    #[test]
    fn other_algorithms_and_foreign_keys_are_refused_without_panicking() {
        install();
        let claims = json!({"exp": 4_000_000_000_i64});
        let hmac = EncodingKey::from_secret(b"a secret of at least thirty-two bytes!");
        assert!(jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &hmac).is_err());
        // An EC key where an RSA key belongs, and a point that is not one.
        use p256::pkcs8::EncodePrivateKey;
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let der = secret.to_pkcs8_der().expect("pkcs8");
        assert!(rsa_pkcs1_from_pkcs8(der.as_bytes()).is_none());
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_der(der.as_bytes()),
        )
        .expect("signs");
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_required_spec_claims(&["exp"]);
        let garbage = DecodingKey::from_ec_der(&[4, 1, 2, 3]);
        assert!(jsonwebtoken::decode::<Value>(&token, &garbage, &validation).is_err());
    }
}
