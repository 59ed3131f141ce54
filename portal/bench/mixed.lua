-- search for a different word (and page size) each request; every 4th request is `deleted`
local words = {"report","budget","meeting","quarter","invoice","client","draft","final","review","project","schedule","notes","summary","design","backup","restore","server","policy","network","storage","offsite","retention","snapshot","archive","recovery","plan","user","ticket","helpdesk","audit"}
local n = 0
request = function()
  n = n + 1
  local path
  if n % 4 == 0 then
    path = "/api/deleted?limit=" .. (20 + n % 31)
  else
    path = "/api/search?q=" .. words[(n % #words) + 1] .. "&limit=" .. (20 + n % 31)
  end
  return wrk.format("GET", path)
end
