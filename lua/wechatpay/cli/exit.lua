--- The exit status of the `wechatpay` command, one table for every
-- subcommand (`wechatpay grant` keeps the batch tool's own: 0, 1, 2, 130).
local exit = {}

exit.OK = 0
exit.CHECK_FAILED = 1     -- doctor: at least one check failed
exit.USAGE = 2            -- the command line is wrong: nothing was sent
exit.NETWORK = 3          -- no answer: connection, TLS, DNS or timeout
exit.HTTP = 4             -- WeChat Pay answered with a status outside 2xx
exit.PUBLIC_KEY_ONLY = 5  -- certs: the merchant has a WeChat Pay public key, no certificates
exit.VERIFY = 6           -- the answer's signature (or a download's seal) does not verify
exit.OUTPUT = 7           -- the output cannot be written: certs' directory, or standard output
exit.CONFIG = 8           -- the configuration does not make a client: nothing was sent
exit.INTERNAL = 70        -- a bug: please report it
exit.INTERRUPTED = 130    -- Ctrl-C

--- The table as `wechatpay --help` prints it.
exit.TABLE = [[
  0    success (doctor: no check failed)
  1    doctor: at least one check failed
  2    usage: the command line is wrong (nothing was sent)
  3    network: no answer (connection refused, DNS, TLS, timeout)
  4    http: WeChat Pay answered with a status outside 2xx
  5    certs: this merchant has only a WeChat Pay public key
  6    verify: the answer does not verify (or a download does not decrypt)
  7    output: certs' directory, or standard output (a full disk), cannot be written
  8    configuration (call, certs): the config file or WECHATPAY_* variables do not make a client
  70   internal error (a bug)
  130  interrupted
]]

local BY_KIND = { http = exit.HTTP, verify = exit.VERIFY, decrypt = exit.VERIFY, malformed = exit.VERIFY,
                  network = exit.NETWORK, timeout = exit.NETWORK, interrupted = exit.INTERRUPTED }

--- of_kind(kind) -> the exit status of a call that failed with that error kind
function exit.of_kind(kind)
  return BY_KIND[kind] or exit.INTERNAL
end

return exit
