-- Gatehouse: the part of lua-ffi-zlib (hamishforbes/lua-ffi-zlib) that APISIX
-- 3.9.1 calls, which the APISIX kit does not carry (dev/apisix/kit/README.md).
--
-- APISIX's loggers decode a gzip-encoded response body before logging it
-- (apisix/utils/content-decode.lua) with
--     inflateGzip(read_input(size) -> string|nil, write_output(string), chunk_size?)
-- returning true, or false and a message. This is that function, over the
-- system's zlib through LuaJIT's FFI: inflate with windowBits 31 (a gzip
-- stream), chunk by chunk.
local ffi = require("ffi")

ffi.cdef([[
typedef struct gatehouse_z_stream_s {
    const unsigned char *next_in;
    unsigned int avail_in;
    unsigned long total_in;
    unsigned char *next_out;
    unsigned int avail_out;
    unsigned long total_out;
    const char *msg;
    void *state;
    void *zalloc;
    void *zfree;
    void *opaque;
    int data_type;
    unsigned long adler;
    unsigned long reserved;
} gatehouse_z_stream;
const char *zlibVersion(void);
int inflateInit2_(gatehouse_z_stream *strm, int windowBits, const char *version, int stream_size);
int inflate(gatehouse_z_stream *strm, int flush);
int inflateEnd(gatehouse_z_stream *strm);
]])

local zlib = ffi.load(ffi.os == "Windows" and "zlib1" or "z")

local Z_OK, Z_STREAM_END, Z_BUF_ERROR, Z_NO_FLUSH = 0, 1, -5, 0
local GZIP_WINDOW_BITS = 31

local _M = { _VERSION = "gatehouse-0.1" }

function _M.inflateGzip(read_input, write_output, chunk_size, window_bits)
    chunk_size = chunk_size or 16384
    local stream = ffi.new("gatehouse_z_stream")
    local ret = zlib.inflateInit2_(stream, window_bits or GZIP_WINDOW_BITS, zlib.zlibVersion(),
                                   ffi.sizeof("gatehouse_z_stream"))
    if ret ~= Z_OK then
        return false, "inflateInit2 failed (" .. ret .. ")"
    end
    local out = ffi.new("unsigned char[?]", chunk_size)
    local ok, err = true, nil
    repeat
        local input = read_input(chunk_size)
        if not input then
            break
        end
        -- `input` stays referenced here while zlib reads from it.
        stream.next_in = ffi.cast("const unsigned char *", input)
        stream.avail_in = #input
        repeat
            stream.next_out = out
            stream.avail_out = chunk_size
            ret = zlib.inflate(stream, Z_NO_FLUSH)
            if ret ~= Z_OK and ret ~= Z_STREAM_END and ret ~= Z_BUF_ERROR then
                ok = false
                err = stream.msg ~= nil and ffi.string(stream.msg) or ("inflate failed (" .. ret .. ")")
                break
            end
            local produced = chunk_size - stream.avail_out
            if produced > 0 then
                write_output(ffi.string(out, produced))
            end
        until stream.avail_out ~= 0 or ret == Z_STREAM_END
    until not ok or ret == Z_STREAM_END
    zlib.inflateEnd(stream)
    if ok and ret ~= Z_STREAM_END then
        return false, "the gzip stream ended early"
    end
    return ok, err
end

return _M
