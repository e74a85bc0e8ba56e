/* A test agent for the subtask hostcalls: subtask_agent spawn SPEC_JSON starts a child,
 * waits for it (poll) and prints its result JSON; a failure prints "ERR <errno>", exit 3. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "spear.h"

static char out[1 << 16];

int main(int argc, char **argv) {
    if (argc != 3 || strcmp(argv[1], "spawn") != 0) return 64;
    int32_t child = spear_task_spawn(argv[2], (uint32_t)strlen(argv[2]));
    if (child < 0) {
        printf("ERR %d\n", -child);
        return 3;
    }
    int32_t r = spear_wait(child, SPEAR_POLLIN, -1);
    if (r < 0) return 4;
    uint32_t len = sizeof out;
    r = spear_task_result(child, out, &len);
    if (r < 0) {
        printf("ERR %d\n", -r);
        return 3;
    }
    fwrite(out, 1, len, stdout);
    return 0;
}
