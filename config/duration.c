/*
 * A restatement of Go's duration grammar: an optional sign, then one or more
 * "<decimal><unit>" components whose decimal may have a fraction ("1.5h"); "0" alone needs no
 * unit. Arithmetic is on uint64 with the same overflow limits as Go (the magnitude may reach
 * 2^63 only when negative), and the fraction is applied through a double exactly as Go does,
 * so values round the same way.
 */
#include "config/duration.h"

#include <string.h>

#include "common/err.h"

#define LIMIT ((uint64_t)1 << 63)

typedef struct {
    const char *name;
    uint64_t ns;
} unit;

static const unit units[] = {
    {"ns", 1},           {"us", 1000},      {"\xc2\xb5s", 1000}, /* U+00B5 micro sign */
    {"\xce\xbcs", 1000},                                         /* U+03BC Greek mu */
    {"ms", 1000000},     {"s", 1000000000}, {"m", 60ull * 1000000000}, {"h", 3600ull * 1000000000},
};

static int is_digit(char c) {
    return c >= '0' && c <= '9';
}

/* Consumes leading digits into |*v|. Returns 0 or EP_ERR_INVALID on overflow. */
static int leading_int(const char **p, const char *end, uint64_t *v) {
    uint64_t x = 0;
    for (; *p < end && is_digit(**p); (*p)++) {
        if (x > LIMIT / 10) {
            return EP_ERR_INVALID;
        }
        x = x * 10 + (uint64_t)(**p - '0');
        if (x > LIMIT) {
            return EP_ERR_INVALID;
        }
    }
    *v = x;
    return EP_OK;
}

/* Consumes fraction digits; digits past uint64 precision are skipped, as Go does. */
static void leading_fraction(const char **p, const char *end, uint64_t *f, double *scale) {
    int overflow = 0;
    *f = 0;
    *scale = 1;
    for (; *p < end && is_digit(**p); (*p)++) {
        if (overflow) {
            continue;
        }
        if (*f > (LIMIT - 1) / 10) {
            overflow = 1;
            continue;
        }
        uint64_t y = *f * 10 + (uint64_t)(**p - '0');
        if (y > LIMIT) {
            overflow = 1;
            continue;
        }
        *f = y;
        *scale *= 10;
    }
}

static const unit *find_unit(const char *p, size_t n) {
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strlen(units[i].name) == n && memcmp(units[i].name, p, n) == 0) {
            return &units[i];
        }
    }
    return NULL;
}

/* One "<decimal><unit>" component added to |*total|. Returns 0 or EP_ERR_INVALID. */
static int component(const char **p, const char *end, uint64_t *total, const char **why) {
    const char *start = *p;
    uint64_t v = 0, f = 0;
    double scale = 1;
    *why = "value out of range";
    if (leading_int(p, end, &v) != EP_OK) {
        return EP_ERR_INVALID;
    }
    int pre = *p != start, post = 0;
    if (*p < end && **p == '.') {
        const char *frac = ++*p;
        leading_fraction(p, end, &f, &scale);
        post = *p != frac;
    }
    if (!pre && !post) {
        *why = "expected a number";
        return EP_ERR_INVALID;
    }
    const char *u = *p;
    while (*p < end && **p != '.' && !is_digit(**p)) {
        (*p)++;
    }
    const unit *un = find_unit(u, (size_t)(*p - u));
    if (un == NULL) {
        *why = *p == u ? "missing unit (ns, us, ms, s, m or h)" : "unknown unit";
        return EP_ERR_INVALID;
    }
    if (v > LIMIT / un->ns) {
        return EP_ERR_INVALID;
    }
    v *= un->ns;
    if (f > 0) {
        v += (uint64_t)((double)f * ((double)un->ns / scale));
        if (v > LIMIT) {
            return EP_ERR_INVALID;
        }
    }
    *total += v;
    return *total > LIMIT ? EP_ERR_INVALID : EP_OK;
}

int config_duration_parse(const char *text, size_t len, int64_t *ns, const char **why) {
    const char *p = text, *end = text + len;
    int neg = 0;
    if (p < end && (*p == '-' || *p == '+')) {
        neg = *p++ == '-';
    }
    if (end - p == 1 && *p == '0') {
        *ns = 0;
        return EP_OK;
    }
    if (p == end) {
        *why = "empty duration";
        return EP_ERR_INVALID;
    }
    uint64_t total = 0;
    while (p < end) {
        if (*p != '.' && !is_digit(*p)) {
            *why = "expected a number";
            return EP_ERR_INVALID;
        }
        if (component(&p, end, &total, why) != EP_OK) {
            return EP_ERR_INVALID;
        }
    }
    if (!neg && total > LIMIT - 1) {
        *why = "value out of range";
        return EP_ERR_INVALID;
    }
    *ns = neg ? (int64_t)(0 - total) : (int64_t)total;
    return EP_OK;
}
