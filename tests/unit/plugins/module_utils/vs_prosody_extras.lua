-- Adds to a corpus (tests/corpus/make_corpus.lua) the cases where our migrator deliberately differs
-- from Prosody's, written through real Prosody's storage code (util.datamanager for keyval stores,
-- mod_storage_internal for archives) as a running Prosody 0.12 would have written them.
--
-- usage: lua5.4 vs_prosody_extras.lua DATA_DIR
local prosody_src = os.getenv("PROSODY_SRC") or "/usr/lib/prosody"
package.path = prosody_src .. "/?.lua;" .. package.path
package.cpath = prosody_src .. "/?.so;" .. package.cpath

local data_dir = assert(arg[1], "usage: vs_prosody_extras.lua DATA_DIR")
local dm = require "util.datamanager"
local st = require "util.stanza"
dm.set_data_path(data_dir)

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
	assert(loadfile(prosody_src .. "/modules/mod_storage_internal.lua", "t", env))()
	return driver
end

local host = "example.org"
local driver = internal_driver(host)
local t0 = 1700100000

local function entry(id, text)
	return st.stanza("item", { xmlns = "http://jabber.org/protocol/pubsub", id = id })
		:tag("entry", { xmlns = "http://www.w3.org/2005/Atom" }):text_tag("title", text):up()
end

-- A pubsub service (mod_pubsub): the node list's "user" is the node name, the node's items are
-- host-level data in archive pubsub_<node>.
local function pubsub_node(name, items)
	dm.store(name, host, "pubsub_nodes", {
		name = name,
		config = { title = "Node " .. name, max_items = 10, persist_items = true },
		affiliations = { ["admin@" .. host] = "owner" },
		subscribers = { ["first.last@" .. host] = true },
	})
	local archive = driver:open("pubsub_" .. name, "archive")
	for i = 1, items do
		assert(archive:append(nil, name .. "-item" .. i, entry(name .. "-item" .. i, "Post " .. i), t0 + i, "admin@" .. host))
	end
end
pubsub_node("princely_musings", 3)
pubsub_node("news", 2)

-- PEP (mod_pep): the account's node list, each node's items in that account's archive pep_<node>.
local pep_node = "urn:xmpp:microblog:0"
dm.store("o'brien", host, "pep", {
	[pep_node] = { name = pep_node, config = { max_items = 5 }, affiliations = { ["o'brien@" .. host] = "owner" } },
})
local pep = driver:open("pep_" .. pep_node, "archive")
for i = 1, 2 do
	assert(pep:append("o'brien", "mb-" .. i, entry("mb-" .. i, "Blog " .. i), t0 + 10 + i, "o'brien@" .. host))
end

-- Numbers Prosody's SQL path rounds or retypes, and a string key whose value is false.
dm.store("numbers", host, "account_details", {
	name = "Numbers",
	sum = 0.1 + 0.2,
	third = 1 / 3,
	whole = 1.0,
	count = 7,
	disabled = false,
	nested = { third = 1 / 3, whole = 1.0, sum = 0.1 + 0.2 },
})

local function chat(id, body)
	return st.message({ from = "peer@" .. host, to = "x@" .. host, type = "chat", id = id }):text_tag("body", body)
end

-- An archive time past 2038-01-19 (32-bit time_t), after an ordinary one.
local future = driver:open("archive", "archive")
assert(future:append("future", "fut-1", chat("f1", "before"), t0, "peer@" .. host))
assert(future:append("future", "fut-2", chat("f2", "after 2038"), 4102444800, "peer@" .. host))
assert(future:append("future", "fut-3", chat("f3", "last"), t0 + 1, "peer@" .. host))

-- Whitespace an XML parser normalises: CR and CRLF in text, TAB and LF in an attribute value.
local ws = driver:open("archive", "archive")
local ws_msg = st.message({ from = "peer@" .. host, to = "ws@" .. host, type = "chat", id = "tab\there\nline" })
	:text_tag("body", "one\rtwo\r\nthree")
assert(ws:append("ws", "ws-1", ws_msg, t0 + 2, "peer@" .. host))
assert(ws:append("ws", "ws-2", chat("w2", "plain"), t0 + 3, "peer@" .. host))

-- A control character in stanza text, between two good items. util.stanza's text() would refuse
-- it, so it is put into the text node directly, as an old Prosody or a hand edit could leave it.
local ctrl = driver:open("archive", "archive")
assert(ctrl:append("ctrl", "ctrl-1", chat("c1", "good before"), t0 + 4, "peer@" .. host))
local bad = chat("c2", "placeholder")
bad.tags[1][1] = "bell\7here"
assert(ctrl:append("ctrl", "ctrl-2", bad, t0 + 5, "peer@" .. host))
assert(ctrl:append("ctrl", "ctrl-3", chat("c3", "good after"), t0 + 6, "peer@" .. host))
