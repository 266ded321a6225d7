-- Canonical, type-tagged encoding of Lua values, shared with prosody_oracle.py.
-- It lets the tests compare data (not text) between real Prosody and our codecs:
--   N nil, T true, F false, i<int>; integer, f<16 hex digits>; float bits, fnan; NaN,
--   s<len>:<bytes> string, t<n>{<key><value>...} table with pairs sorted by encoded key.
local canon = {}

local function encode(v)
	local ty = type(v)
	if ty == "nil" then return "N"
	elseif ty == "boolean" then return v and "T" or "F"
	elseif ty == "number" then
		if math.type(v) == "integer" then return "i" .. string.format("%d", v) .. ";" end
		if v ~= v then return "fnan;" end
		local bits = string.pack(">d", v)
		return "f" .. (bits:gsub(".", function(c) return string.format("%02x", c:byte()) end)) .. ";"
	elseif ty == "string" then return "s" .. #v .. ":" .. v
	elseif ty == "table" then
		local pairs_out = {}
		for k, val in next, v do
			pairs_out[#pairs_out + 1] = { encode(k), encode(val) }
		end
		table.sort(pairs_out, function(a, b) return a[1] < b[1] end)
		local out = { "t", tostring(#pairs_out), "{" }
		for _, p in ipairs(pairs_out) do
			out[#out + 1] = p[1]
			out[#out + 1] = p[2]
		end
		out[#out + 1] = "}"
		return table.concat(out)
	end
	error("cannot canonicalise a " .. ty)
end
canon.encode = encode

local function decode_at(s, i)
	local c = s:sub(i, i)
	if c == "N" then return nil, i + 1
	elseif c == "T" then return true, i + 1
	elseif c == "F" then return false, i + 1
	elseif c == "i" then
		local j = s:find(";", i, true)
		return math.tointeger(tonumber(s:sub(i + 1, j - 1))), j + 1
	elseif c == "f" then
		local j = s:find(";", i, true)
		local hex = s:sub(i + 1, j - 1)
		if hex == "nan" then return 0/0, j + 1 end
		local bits = hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)
		return (string.unpack(">d", bits)), j + 1
	elseif c == "s" then
		local j = s:find(":", i, true)
		local len = tonumber(s:sub(i + 1, j - 1))
		return s:sub(j + 1, j + len), j + 1 + len
	elseif c == "t" then
		local j = s:find("{", i, true)
		local n = tonumber(s:sub(i + 1, j - 1))
		local t, pos = {}, j + 1
		for _ = 1, n do
			local k, v
			k, pos = decode_at(s, pos)
			v, pos = decode_at(s, pos)
			t[k] = v
		end
		assert(s:sub(pos, pos) == "}", "bad canon table end")
		return t, pos + 1
	end
	error("bad canon tag " .. c .. " at " .. i)
end

function canon.decode(s)
	local v, pos = decode_at(s, 1)
	assert(pos == #s + 1, "trailing canon data")
	return v
end

return canon
