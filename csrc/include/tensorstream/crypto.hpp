// libsodium primitives as tensorizer uses them: XSalsa20-Poly1305 secret boxes with detached MACs,
// per-chunk nonces counted up from a random first one, and Argon2id key derivation.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <tuple>

namespace ts::crypto {

inline constexpr size_t kKeyBytes = 32;
inline constexpr size_t kNonceBytes = 24;
inline constexpr size_t kMacBytes = 16;
inline constexpr size_t kSaltBytes = 16;
inline constexpr uint64_t kChunkBytes = 2u << 20;  // what writers cut data into
inline constexpr int32_t kAlgArgon2id13 = 2;
// Limits on key-derivation cost read from a file (libsodium's "sensitive" preset is 4 / 1 GiB);
// the same limits apply when writing, so every file written can be read back.
inline constexpr uint64_t kMaxOpslimit = 32;
inline constexpr uint64_t kMaxMemlimit = 4ull << 30;

using Nonce = std::array<uint8_t, kNonceBytes>;
using Mac = std::array<uint8_t, kMacBytes>;

// 32 key bytes, wiped when destroyed.
class SecretKey {
 public:
  SecretKey() = default;
  SecretKey(const void* bytes, size_t n);  // n must be kKeyBytes (std::invalid_argument)
  SecretKey(const SecretKey& o) : bytes_(o.bytes_) {}
  SecretKey& operator=(const SecretKey& o);
  ~SecretKey();
  const uint8_t* data() const { return bytes_.data(); }

 private:
  std::array<uint8_t, kKeyBytes> bytes_{};
};

// Argon2id parameters stored in a key-derivation chunk.
struct PwHash {
  uint64_t opslimit = 0;
  uint64_t memlimit = 0;
  int32_t alg = kAlgArgon2id13;
  std::array<uint8_t, kSaltBytes> salt{};
  bool operator<(const PwHash& o) const {
    return std::tie(opslimit, memlimit, alg, salt) < std::tie(o.opslimit, o.memlimit, o.alg, o.salt);
  }
};

// Initialises libsodium once (thread-safe); throws if it cannot.
void init();
void random_bytes(void* out, size_t n);
// Overwrites secret bytes in a way the compiler does not drop.
void wipe(void* p, size_t n);
// std::invalid_argument if `params` are outside libsodium's or tensorstream's limits.
void check_pwhash(const PwHash& params);

// Derives a key from a passphrase; std::invalid_argument for parameters outside libsodium's or
// tensorstream's limits, CryptographyError if libsodium fails (e.g. out of memory).
SecretKey derive_key(const std::string& passphrase, const PwHash& params);

// `first` + i, little-endian, as libsodium's sodium_increment counts.
Nonce nonce_at(const Nonce& first, uint64_t i);

// Encrypts n bytes of `in` into `out` (may be the same memory) and returns the MAC.
Mac seal(uint8_t* out, const uint8_t* in, size_t n, const Nonce& nonce, const SecretKey& key);
// Checks the MAC, then decrypts in place; false (buffer unchanged) when the MAC does not match.
bool open(uint8_t* buf, size_t n, const Nonce& nonce, const Mac& mac, const SecretKey& key);

// What a loader was given to decrypt with: an exact key or a passphrase (keys derived from it
// are cached per set of parameters). Both are wiped when destroyed.
class KeySource {
 public:
  KeySource() = default;
  ~KeySource();
  KeySource(const KeySource&) = delete;
  KeySource& operator=(const KeySource&) = delete;

  void set_key(const std::string& key);
  void set_passphrase(const std::string& passphrase);
  void clear();
  bool empty() const { return !key_ && passphrase_.empty(); }
  // The key for one tensor: the exact key, or the one derived from `kdf` (null when the tensor
  // carries no key-derivation chunk). Throws CryptographyError naming `tensor`.
  const SecretKey& key_for(const PwHash* kdf, const std::string& tensor);

 private:
  std::optional<SecretKey> key_;
  std::string passphrase_;
  std::map<PwHash, SecretKey> derived_;
};

}  // namespace ts::crypto
