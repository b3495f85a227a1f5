/* Generates text from a peerlm model file through the C ABI, then scores a sentence.
 *
 *   cc -O2 -Iinclude examples/c/generate.c -Ltarget/release -lpeerlm -o generate
 *   LD_LIBRARY_PATH=target/release ./generate model.safetensors "The" 40
 *
 * Exit status 0 on success, 1 with the library's message on stderr on any error. */
#include <stdio.h>
#include <stdlib.h>

#include "peerlm.h"

static void print_token(const char *bytes, size_t len, void *user) {
    size_t *count = user;
    fwrite(bytes, 1, len, stdout);
    fflush(stdout);
    *count += 1;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL PROMPT [TOKENS]\n", argv[0]);
        return 2;
    }
    size_t max_tokens = argc > 3 ? (size_t)strtoul(argv[3], NULL, 10) : 40;
    peerlm_model *model = peerlm_open(argv[1]);
    if (model == NULL) {
        fprintf(stderr, "error: %s\n", peerlm_last_error());
        return 1;
    }
    size_t seen = 0;
    printf("%s", argv[2]);
    int64_t generated = peerlm_generate(model, argv[2], max_tokens, 0.8, 40, 1, print_token, &seen);
    printf("\n");
    if (generated < 0) {
        fprintf(stderr, "error: %s\n", peerlm_last_error());
        peerlm_free(model);
        return 1;
    }
    double nats = 0.0;
    size_t tokens = 0;
    if (peerlm_score(model, argv[2], &nats, &tokens) != 0) {
        fprintf(stderr, "error: %s\n", peerlm_last_error());
        peerlm_free(model);
        return 1;
    }
    printf("generated %lld tokens (callback saw %zu); prompt: %zu tokens, %.4f nats\n", (long long)generated, seen,
           tokens, nats);
    peerlm_free(model);
    return 0;
}
