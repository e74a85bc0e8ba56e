/* A test agent for the MCP tool hostcalls: mcp_agent list | mcp_agent call REQUEST_JSON
 * prints the JSON answer; a failure prints "ERR <errno>" and exits 3. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "spear.h"

static char out[1 << 20];

int main(int argc, char **argv) {
    if (argc < 2) return 64;
    uint32_t len = sizeof out;
    int32_t r;
    if (strcmp(argv[1], "list") == 0) {
        r = spear_tool_list(out, &len);
    } else if (strcmp(argv[1], "call") == 0 && argc == 3) {
        r = spear_tool_call(argv[2], (uint32_t)strlen(argv[2]), out, &len);
    } else {
        return 64;
    }
    if (r < 0) {
        printf("ERR %d\n", -r);
        return 3;
    }
    fwrite(out, 1, len, stdout);
    return 0;
}
