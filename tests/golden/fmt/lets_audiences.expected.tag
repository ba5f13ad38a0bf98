let a = 1
let b = 2

let c = 3
tag "t1" when a > b
tag "t2" manual

audience "人群A" = tag("t1")

audience "人群B" = tag("t1") or tag("t2")

let d = now() - 30d
tag "t3" when last_active_at > d

tag "t4" when subscribe_time < date("2024-01-01") {
  priority 1
}

tag "t5" when true
