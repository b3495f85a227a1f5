/* peerlm: inference from a peerlm model file (PEER, "Mixture of A Million Experts", on a CPU).
 *
 * Link with -lpeerlm (libpeerlm.so, built by `cargo build --release --no-default-features --features infer`
 * or by the default build). A model file is written by `peerlm export`; a training checkpoint opens too.
 * The file is memory-mapped: opening copies nothing and the expert tables stay in the page cache.
 *
 * Errors: a function that fails returns NULL or -1 and leaves a message for peerlm_last_error(), kept per
 * thread. A model handle may be used by one thread at a time. */
#ifndef PEERLM_H
#define PEERLM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct PeerlmModel peerlm_model;

/* Called with each generated token's bytes: `len` bytes, not NUL-terminated; a token may end inside a
 * UTF-8 character. */
typedef void (*peerlm_token_fn)(const char *bytes, size_t len, void *user);

/* Opens the model file at `path` (UTF-8). NULL on error: a missing, truncated or corrupt file. */
peerlm_model *peerlm_open(const char *path);

/* Continues `prompt` with up to `max_new_tokens` tokens, stopping early at end-of-text, calling
 * `on_token` (may be NULL) with `user` for each. `temperature` 0 is greedy; `top_k` 0 samples among all
 * tokens; `seed` fixes the draw. Returns the number of tokens generated, or -1 on error. */
int64_t peerlm_generate(peerlm_model *model, const char *prompt, size_t max_new_tokens, double temperature,
                        size_t top_k, uint64_t seed, peerlm_token_fn on_token, void *user);

/* Scores `text`: its summed negative log-likelihood in nats goes to *nats, the tokens scored to *tokens
 * (the first given the end-of-text token). Returns 0, or -1 on error. */
int peerlm_score(peerlm_model *model, const char *text, double *nats, size_t *tokens);

/* The calling thread's last error message ("" if none); valid until its next peerlm call. */
const char *peerlm_last_error(void);

/* Frees a model handle (NULL is ignored). */
void peerlm_free(peerlm_model *model);

#ifdef __cplusplus
}
#endif

#endif
