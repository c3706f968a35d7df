// The public headers compile as C++ and the shared library links from C++:
// the extern "C" guards are in place and the symbols a user needs are exported.
#include "vdisk/aio.h"
#include "vdisk/block.h"
#include "vdisk/common.h"
#include "vdisk/coroutine.h"
#include "vdisk/error.h"
#include "vdisk/iov.h"
#include "vdisk/json.h"
#include "vdisk/log.h"
#include "vdisk/opts.h"
#include "vdisk/throttle.h"
#include "vdisk/version.h"
#include <cstdio>
#include <cstdlib>
#include <cstring>

int main()
{
    static_assert(VDISK_VERSION_AT_LEAST(0, 0, 1), "version macro");
    VdError *err = nullptr;
    const char text[] = "{\"a\": [1, 2]}";
    VdJson *v = vd_json_parse(text, strlen(text), &err);
    if (!v) {
        std::fprintf(stderr, "parse failed\n");
        return 1;
    }
    char *s = vd_json_to_string(v, false);
    int ok = std::strcmp(s, "{\"a\":[1,2]}") == 0;
    if (!ok) {
        std::fprintf(stderr, "round trip gave %s\n", s);
    }
    std::free(s);
    vd_json_unref(v);
    std::printf("vdisk %s\n", VDISK_VERSION_STRING);
    return ok ? 0 : 1;
}
