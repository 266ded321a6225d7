-- Writes a realistic Prosody data directory through real Prosody's own storage code:
-- util.datamanager for keyval stores and mod_storage_internal (loaded with a minimal `module`
-- stand-in) for archives, so every byte is as a running Prosody 0.12 would have written it.
--
-- usage: lua5.4 make_corpus.lua DATA_DIR USERS MESSAGES [SEED] [ITERATIONS]
-- Deterministic for a seed. Every user's password is "pw-<username>" (SCRAM-SHA-1 hashed).
local prosody_src = os.getenv("PROSODY_SRC") or "/usr/lib/prosody"
package.path = prosody_src .. "/?.lua;" .. package.path
package.cpath = prosody_src .. "/?.so;" .. package.cpath

local data_dir, n_users, n_messages, seed, iterations = arg[1], tonumber(arg[2]), tonumber(arg[3]), tonumber(arg[4] or 1), tonumber(arg[5] or 4096)
assert(data_dir and n_users and n_messages, "usage: make_corpus.lua DATA_DIR USERS MESSAGES [SEED] [ITERATIONS]")
math.randomseed(seed)

local function rand_id(len)
	local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	local out = {}
	for i = 1, len do
		local n = math.random(1, #alphabet)
		out[i] = alphabet:sub(n, n)
	end
	return table.concat(out)
end

-- Deterministic ids instead of util.id's random bytes, before anything captures util.id.
package.loaded["util.id"] = {
	tiny = function() return rand_id(4) end, short = function() return rand_id(12) end,
	medium = function() return rand_id(16) end, long = function() return rand_id(24) end,
}

local dm = require "util.datamanager"
local st = require "util.stanza"
local scram = require "util.sasl.scram"
local hex = require "util.hex"
dm.set_data_path(data_dir)

-- mod_storage_internal, as Prosody loads it, for one host.
local function internal_driver(host)
	local driver
	local env = setmetatable({
		module = {
			host = host,
			get_option_number = function(_, _, default) return default end,
			get_option = function(_, _, default) return default end,
			log = function() end,
			provides = function(_, _, d) driver = d end,
		},
	}, { __index = _G })
	package.loaded["core.storagemanager"] = { olddm = dm }
	local chunk = assert(loadfile(prosody_src .. "/modules/mod_storage_internal.lua", "t", env))
	chunk()
	return driver
end

local host, muc_host = "example.org", "conference.example.org"
local archive = internal_driver(host)
local muc_archive = internal_driver(muc_host)
local mam = archive:open("archive", "archive")
local offline = archive:open("offline", "archive")
local muc_log = muc_archive:open("muc_log", "archive")

local base_time = 1700000000
local get_auth_db = scram.getAuthenticationDatabaseSHA1

local function username(i)
	-- A few names that exercise Prosody's file name encoding.
	local special = { "caf\195\169", "first.last", "o'brien" }
	return special[i] or string.format("user%05d", i)
end

local function words(n)
	local vocab = { "hello", "meeting", "tomorrow", "<ok>", "&", "caf\195\169", "\226\152\131", "done", "see", "you" }
	local out = {}
	for i = 1, n do out[i] = vocab[math.random(1, #vocab)] end
	return table.concat(out, " ")
end

local function write_user(i)
	local user = username(i)
	local jid = user .. "@" .. host
	local salt = rand_id(24)
	local _, stored_key, server_key = get_auth_db("pw-" .. user, salt, iterations)
	dm.store(user, host, "accounts", {
		stored_key = hex.to(stored_key), server_key = hex.to(server_key), salt = salt, iteration_count = iterations,
	})
	dm.store(user, host, "account_details", { name = "User " .. i, email = user .. "@mail.example" })

	local roster = { [false] = { version = math.random(1, 500), pending = {} } }
	for c = 1, 20 + (i % 20) do
		local contact = username(((i + c * 7) % n_users) + 1) .. "@" .. host
		roster[contact] = {
			subscription = ({ "both", "to", "from", "none" })[c % 4 + 1],
			groups = c % 3 == 0 and { Friends = true, ["Caf\195\169"] = true } or {},
			name = c % 2 == 0 and ("Contact " .. c) or nil,
			ask = c % 11 == 0 and "subscribe" or nil,
		}
	end
	dm.store(user, host, "roster", roster)

	local vcard = st.stanza("vCard", { xmlns = "vcard-temp" })
		:text_tag("FN", "User " .. i):text_tag("NICKNAME", user)
		:tag("EMAIL"):tag("INTERNET"):up():text_tag("USERID", user .. "@mail.example"):up()
	dm.store(user, host, "vcard", st.preserialize(vcard))

	dm.store(user, host, "private", {
		["storage:storage:bookmarks"] = st.preserialize(st.stanza("storage", { xmlns = "storage:bookmarks" })
			:tag("conference", { jid = "room1@" .. muc_host, autojoin = "true", name = "Room 1" })),
	})
	if i % 3 == 0 then
		dm.store(user, host, "blocklist", { [false] = { created = base_time }, ["spam" .. i .. "@evil.example"] = true })
	end

	for m = 1, n_messages do
		local peer = username(((i + m) % n_users) + 1) .. "@" .. host
		local outgoing = m % 2 == 0
		local msg = st.message({
			from = outgoing and jid or peer, to = outgoing and peer or jid, type = "chat", id = rand_id(10),
			["xml:lang"] = "en",
		}):text_tag("body", words(3 + m % 12))
		if m % 5 == 0 then msg:tag("active", { xmlns = "http://jabber.org/protocol/chatstates" }):up() end
		mam:append(user, nil, msg, base_time + i * 1000 + m, peer)
	end
	if i % 10 == 0 then
		offline:append(user, nil, st.message({ from = "admin@" .. host, to = jid, type = "normal" })
			:text_tag("body", "You were offline"), base_time + i, nil)
	end
end

for i = 1, n_users do write_user(i) end

-- A MUC component: a few persistent rooms with configs, and their logs.
local n_rooms = math.max(1, n_users // 50)
local persistent = {}
for r = 1, n_rooms do
	local node = "room" .. r
	local room_jid = node .. "@" .. muc_host
	persistent[room_jid] = true
	dm.store(node, muc_host, "config", {
		jid = room_jid,
		_data = { name = "Room " .. r, description = "Talk " .. words(2), persistent = true, public = true,
			history_length = 20, subject = "Welcome", subject_from = room_jid .. "/admin", whois = "moderators" },
		_affiliations = { [username(1) .. "@" .. host] = "owner", [username(2) .. "@" .. host] = "member" },
		_affiliation_data = { [username(2) .. "@" .. host] = { reserved_nickname = "two" } },
	})
	for m = 1, math.min(n_messages, 50) do
		local nick = "nick" .. (m % 5)
		local msg = st.message({ from = room_jid .. "/" .. nick, type = "groupchat", id = rand_id(10) })
			:text_tag("body", words(4))
		-- mod_muc_mam files every room message under the peer "message<groupchat".
		muc_log:append(node, nil, msg, base_time + r * 100 + m, "message<groupchat")
	end
end
dm.store(nil, muc_host, "persistent", persistent)
