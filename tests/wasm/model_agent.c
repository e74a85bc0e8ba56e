/* A test agent for the model hostcalls: model_agent MODE REQUEST_JSON
 *   stream: each text piece to stdout followed by \x1e, then \x1d and the result JSON
 *   chat:   the result JSON (spear_model_chat)
 *   embed:  the embeddings JSON
 * A failure prints "ERR <errno> <message>" and exits 3.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "spear.h"

static char out[1 << 20];

static int err(int32_t handle, int32_t code) {
    char message[512] = "";
    uint32_t len = sizeof message - 1;
    if (handle >= 0 && spear_model_chat_error(handle, message, &len) >= 0) message[len] = '\0';
    printf("ERR %d %s\n", -code, message);
    return 3;
}

int main(int argc, char **argv) {
    if (argc != 3) return 64;
    const char *mode = argv[1], *req = argv[2];
    uint32_t req_len = (uint32_t)strlen(req);
    if (strcmp(mode, "chat") == 0) {
        uint32_t len = sizeof out;
        int32_t r = spear_model_chat(req, req_len, out, &len);
        if (r < 0) return err(-1, r);
        fwrite(out, 1, len, stdout);
        return 0;
    }
    if (strcmp(mode, "embed") == 0) {
        uint32_t len = sizeof out;
        int32_t r = spear_model_embed(req, req_len, out, &len);
        if (r < 0) return err(-1, r);
        fwrite(out, 1, len, stdout);
        return 0;
    }
    if (strcmp(mode, "stream") == 0) {
        int32_t h = spear_model_chat_start(req, req_len, SPEAR_CHAT_STREAM);
        if (h < 0) return err(-1, h);
        for (;;) {
            char piece[256];
            uint32_t len = sizeof piece;
            int32_t r = spear_model_chat_recv(h, piece, &len);
            if (r == -EPIPE) break;
            if (r < 0) return err(h, r);
            fwrite(piece, 1, (size_t)r, stdout);
            fputc(0x1e, stdout);
            fflush(stdout);
        }
        uint32_t len = sizeof out;
        int32_t r = spear_model_chat_result(h, out, &len);
        if (r < 0) return err(h, r);
        fputc(0x1d, stdout);
        fwrite(out, 1, len, stdout);
        return spear_close(h) == 0 ? 0 : 4;
    }
    return 64;
}
