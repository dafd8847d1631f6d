/*
 * The narrow interface between the Lua bindings and a crypto library.
 *
 * Nothing here knows about Lua, and nothing outside crypto_<backend>.c knows
 * about mbedTLS: a second backend (OpenSSL) is one more file implementing
 * these functions.  Every function returns 0 on success and -1 on failure,
 * with a human-readable reason written to `err` (never key material).
 */
#ifndef WECHATPAY_CRYPTO_H
#define WECHATPAY_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#define WP_ERRLEN 256
#define WP_RSA_MAX_BYTES 1024   /* up to RSA-8192 */
#define WP_SERIAL_HEX_MAX 130   /* 64 serial bytes as hex + NUL */
#define WP_PASSPHRASE_MAX 1024  /* what OpenSSL's PEM passphrase callback can read */

typedef struct wp_key wp_key;   /* an RSA key: public, private, or a certificate's */

typedef enum {
  WP_DER_AUTO = 0,              /* private PKCS#8/PKCS#1, then public SPKI/PKCS#1 */
  WP_DER_PRIVATE_PKCS8,
  WP_DER_PRIVATE_PKCS1,
  WP_DER_PUBLIC_PKCS1,
  WP_DER_PUBLIC_SPKI
} wp_der_form;

typedef struct {
  int is_cert;
  char serial[WP_SERIAL_HEX_MAX];  /* upper-case hex, leading zero bytes dropped */
  int64_t not_before, not_after;   /* unix seconds, UTC */
} wp_cert_info;

/* Keys.  `pass` may be NULL.  On success *out owns a new key. */
int  wp_key_from_pem(wp_key **out, const char *pem, size_t len,
                     const char *pass, size_t passlen, char *err);
int  wp_key_from_der(wp_key **out, wp_der_form form,
                     const unsigned char *der, size_t len, char *err);
void wp_key_free(wp_key *key);
int  wp_key_is_private(const wp_key *key);
size_t wp_key_bits(const wp_key *key);
const wp_cert_info *wp_key_cert(const wp_key *key);  /* NULL unless a certificate */
/* A private key as unencrypted DER (PKCS#1 or PKCS#8, as the library
 * writes it) in a new malloc'd *der: the caller wipes it (wp_wipe) and
 * frees it.  For a TLS library given the key from memory: it never needs
 * the passphrase, which the key was decrypted with once. */
int  wp_key_private_der(wp_key *key, unsigned char **der, size_t *len, char *err);

/* RSA.  Output buffers hold WP_RSA_MAX_BYTES. */
int wp_rsa_sign_sha256(wp_key *key, const unsigned char *msg, size_t len,
                       unsigned char *sig, size_t *siglen, char *err);
/* 1: valid, 0: not valid (never an error: a bad signature is an answer). */
int wp_rsa_verify_sha256(wp_key *key, const unsigned char *msg, size_t len,
                         const unsigned char *sig, size_t siglen);
int wp_rsa_oaep_encrypt(wp_key *key, const unsigned char *in, size_t inlen,
                        unsigned char *out, size_t *outlen, char *err);
int wp_rsa_oaep_decrypt(wp_key *key, const unsigned char *in, size_t inlen,
                        unsigned char *out, size_t *outlen, char *err);
size_t wp_rsa_oaep_max_plaintext(const wp_key *key);

/* AES.  GCM: `out` holds inlen bytes; the tag is 16 bytes apart from it;
 * the nonce is 1 to WP_GCM_IV_MAX bytes (WeChat Pay's are 12). */
#define WP_GCM_IV_MAX 128
int wp_aes_gcm_encrypt(const unsigned char *key, size_t keylen,
                       const unsigned char *iv, size_t ivlen,
                       const unsigned char *aad, size_t aadlen,
                       const unsigned char *in, size_t inlen,
                       unsigned char *out, unsigned char tag[16], char *err);
int wp_aes_gcm_decrypt(const unsigned char *key, size_t keylen,
                       const unsigned char *iv, size_t ivlen,
                       const unsigned char *aad, size_t aadlen,
                       const unsigned char *in, size_t inlen,
                       const unsigned char tag[16],
                       unsigned char *out, char *err);
/* ECB with PKCS#7: encrypt's `out` holds inlen + 16; decrypt's holds inlen. */
int wp_aes_ecb_encrypt(const unsigned char *key, size_t keylen,
                       const unsigned char *in, size_t inlen,
                       unsigned char *out, size_t *outlen, char *err);
int wp_aes_ecb_decrypt(const unsigned char *key, size_t keylen,
                       const unsigned char *in, size_t inlen,
                       unsigned char *out, size_t *outlen, char *err);

/* Digests (raw output) and HMAC. */
typedef enum { WP_MD_SHA256, WP_MD_SHA1, WP_MD_MD5 } wp_md;
size_t wp_md_size(wp_md md);
int wp_digest(wp_md md, const unsigned char *in, size_t len, unsigned char *out);
int wp_hmac_sha256(const unsigned char *key, size_t keylen,
                   const unsigned char *in, size_t len, unsigned char out[32]);

/* Incremental digests, for data that never sits whole in memory (a bill
 * download).  wp_md_new returns NULL when out of memory; wp_md_final writes
 * wp_md_size(md) bytes once, after which the context only takes wp_md_free
 * (which accepts NULL). */
typedef struct wp_md_ctx wp_md_ctx;
wp_md_ctx *wp_md_new(wp_md md);
int  wp_md_update(wp_md_ctx *ctx, const unsigned char *in, size_t len);
int  wp_md_final(wp_md_ctx *ctx, unsigned char *out);
void wp_md_free(wp_md_ctx *ctx);

/* CSPRNG: seeded once per process, reseeded in a forked child. */
int wp_random(unsigned char *out, size_t len, char *err);

/* Overwrite secrets so they do not linger in freed memory. */
void wp_wipe(void *p, size_t len);

const char *wp_crypto_backend(void);   /* e.g. "mbedTLS 2.28.3" */

#endif
