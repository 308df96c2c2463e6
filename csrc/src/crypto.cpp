#include "tensorstream/crypto.hpp"

#include <sodium.h>

#include <cstring>
#include <stdexcept>

#include "tensorstream/errors.hpp"

namespace ts::crypto {

static_assert(kKeyBytes == crypto_secretbox_KEYBYTES && kNonceBytes == crypto_secretbox_NONCEBYTES &&
              kMacBytes == crypto_secretbox_MACBYTES && kSaltBytes == crypto_pwhash_SALTBYTES);

void init() {
  static const int rc = sodium_init();  // 0 first time, 1 if already done, -1 on failure
  if (rc < 0) throw std::runtime_error("libsodium could not be initialised");
}

void random_bytes(void* out, size_t n) {
  init();
  randombytes_buf(out, n);
}

SecretKey::SecretKey(const void* bytes, size_t n) {
  if (n != kKeyBytes)
    throw std::invalid_argument("a key is " + std::to_string(kKeyBytes) + " bytes, not " + std::to_string(n));
  std::memcpy(bytes_.data(), bytes, n);
}

SecretKey& SecretKey::operator=(const SecretKey& o) {
  bytes_ = o.bytes_;
  return *this;
}

SecretKey::~SecretKey() { sodium_memzero(bytes_.data(), bytes_.size()); }

namespace {
// Why `p` is refused (empty if it is fine), and the field to blame.
std::string pwhash_problem(const PwHash& p, const char** field) {
  auto range = [](const char* what, uint64_t v, uint64_t lo, uint64_t hi) {
    return std::string(what) + " " + std::to_string(v) + " is outside [" + std::to_string(lo) + ", " +
           std::to_string(hi) + "]";
  };
  if (p.alg != crypto_pwhash_ALG_ARGON2ID13) {
    *field = "alg";
    return "unsupported key derivation algorithm " + std::to_string(p.alg) + " (only Argon2id v1.3, 2, is known)";
  }
  if (p.opslimit < crypto_pwhash_OPSLIMIT_MIN || p.opslimit > kMaxOpslimit) {
    *field = "opslimit";
    return range("opslimit", p.opslimit, crypto_pwhash_OPSLIMIT_MIN, kMaxOpslimit);
  }
  if (p.memlimit < crypto_pwhash_MEMLIMIT_MIN || p.memlimit > kMaxMemlimit) {
    *field = "memlimit";
    return range("memlimit", p.memlimit, crypto_pwhash_MEMLIMIT_MIN, kMaxMemlimit);
  }
  return {};
}
}  // namespace

void wipe(void* p, size_t n) { sodium_memzero(p, n); }

void check_pwhash(const PwHash& p) {
  const char* field = nullptr;
  std::string problem = pwhash_problem(p, &field);
  if (!problem.empty()) throw std::invalid_argument(problem);
}

SecretKey derive_key(const std::string& passphrase, const PwHash& p) {
  init();
  check_pwhash(p);
  if (passphrase.empty()) throw std::invalid_argument("the passphrase is empty");
  uint8_t out[kKeyBytes];
  int rc = crypto_pwhash(out, sizeof out, passphrase.data(), passphrase.size(), p.salt.data(), p.opslimit,
                         static_cast<size_t>(p.memlimit), p.alg);
  if (rc != 0) throw CryptographyError("key derivation failed (out of memory?)");
  SecretKey key(out, sizeof out);
  sodium_memzero(out, sizeof out);
  return key;
}

Nonce nonce_at(const Nonce& first, uint64_t i) {
  Nonce n = first;
  uint8_t add[kNonceBytes] = {};
  std::memcpy(add, &i, sizeof i);  // little-endian host (checked in bytes.hpp)
  sodium_add(n.data(), add, kNonceBytes);
  return n;
}

Mac seal(uint8_t* out, const uint8_t* in, size_t n, const Nonce& nonce, const SecretKey& key) {
  Mac mac;
  crypto_secretbox_detached(out, mac.data(), in, n, nonce.data(), key.data());
  return mac;
}

bool open(uint8_t* buf, size_t n, const Nonce& nonce, const Mac& mac, const SecretKey& key) {
  return crypto_secretbox_open_detached(buf, buf, mac.data(), n, nonce.data(), key.data()) == 0;
}

KeySource::~KeySource() { clear(); }

void KeySource::clear() {
  key_.reset();
  derived_.clear();
  if (!passphrase_.empty()) sodium_memzero(passphrase_.data(), passphrase_.size());
  passphrase_.clear();
}

void KeySource::set_key(const std::string& key) {
  init();
  clear();
  key_.emplace(key.data(), key.size());
}

void KeySource::set_passphrase(const std::string& passphrase) {
  if (passphrase.empty()) throw std::invalid_argument("the passphrase is empty");
  init();
  clear();
  passphrase_ = passphrase;
}

const SecretKey& KeySource::key_for(const PwHash* kdf, const std::string& tensor) {
  if (key_) return *key_;
  if (passphrase_.empty()) throw KeyRequiredError("no decryption key was given");
  if (!kdf)
    throw CryptographyError(
        "was encrypted with an exact key, not a passphrase: decrypt it with DecryptionParams.from_key()", tensor);
  auto it = derived_.find(*kdf);
  if (it != derived_.end()) return it->second;
  const char* field = nullptr;
  std::string problem = pwhash_problem(*kdf, &field);
  if (!problem.empty()) throw FormatError("key derivation refused: " + problem, tensor, field);
  return derived_.emplace(*kdf, derive_key(passphrase_, *kdf)).first->second;
}

}  // namespace ts::crypto
