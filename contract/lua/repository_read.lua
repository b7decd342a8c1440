-- The repository's desired state, read together: {generation, unloaded model names...}.
-- KEYS: generation unloaded
-- ARGV:
return {redis.call('GET', KEYS[1]) or '0', redis.call('HKEYS', KEYS[2])}
