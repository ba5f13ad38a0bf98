# The benchmark's reference ruleset: 26 rules typical of a retail brand's
# official account (see bench/RESULTS.md). The hand-written baselines in
# bench/baselines/ compute exactly the same (openid, tag) set.

let dormant_window = 90d  # 沉睡唤醒：连续 90 天无互动、无订单
let new_window = 7d  # 新关注：7 天内关注
let vip_window = 365d  # 高价值：近一年……
let vip_spend = 2000  # ……消费至少 2000 元……
let vip_orders = 3  # ……且至少 3 单
let trial_window = 30d  # 意向待跟进：30 天内申请试用且从未下单
let category_window = 90d  # 品类买家：90 天内买过
let promo_share = 0.6  # 促销敏感：促销订单占比 ≥ 60%……
let promo_min_orders = 3  # ……且至少 3 单
let menu_window = 30d  # 菜单点击：30 天内
let new_tier1 = ["杭州", "成都", "武汉", "南京", "苏州", "西安", "重庆"]

tag "沉睡唤醒" when not (last_active_at > now() - dormant_window)
    and not exists(events where type != "unsubscribe" within dormant_window)
    and not exists(orders within dormant_window) {
  description "连续90天无互动、无订单"
  priority 70
}

tag "新关注" when subscribe_time > now() - new_window {
  description "7天内关注"
  priority 60
}

group "地域" exclusive {
  tag "地域-北京" when city == "北京" { priority 20 }
  tag "地域-上海" when city == "上海" { priority 20 }
  tag "地域-广州" when city == "广州" { priority 20 }
  tag "地域-深圳" when city == "深圳" { priority 20 }
  tag "地域-新一线" when city in new_tier1 { priority 20 }
  tag "地域-其他" when city not in ["北京", "上海", "广州", "深圳"] and city not in new_tier1 and city != "" {
    priority 20
  }
}

tag "高价值" when sum(orders.amount within vip_window) >= vip_spend
    and count(orders within vip_window) >= vip_orders {
  description "近一年消费≥2000元且≥3单"
  priority 90
}

tag "意向待跟进" when exists(events where type == "trial" within trial_window) and count(orders) == 0 {
  description "30天内申请试用、从未下单"
  priority 80
}

tag "护肤买家" when exists(orders where category == "护肤" within category_window) { priority 40 }
tag "母婴买家" when exists(orders where category == "母婴" within category_window) { priority 40 }
tag "食品买家" when exists(orders where category == "食品" within category_window) { priority 40 }

tag "促销敏感" when count(orders within vip_window) >= promo_min_orders
    and count(orders where promo within vip_window) / count(orders within vip_window) >= promo_share {
  description "近一年促销订单占比≥60%且≥3单"
  priority 50
}

tag "预流失" when days_since(last(orders.created_at)) between 30 and 60 {
  description "最近一单在30到60天前"
  priority 60
}

group "生命周期" exclusive {
  tag "新客" when count(orders) == 0 and subscribe_time > now() - 30d { priority 90 }
  tag "首单客" when count(orders) == 1 { priority 90 }
  tag "老客" when count(orders) >= 2 { priority 90 }
  tag "潜在客" when count(orders) == 0 and not (subscribe_time > now() - 30d) { priority 90 }
}

tag "点击会员中心" when exists(events where type == "menu_click" and key == "会员中心" within menu_window) { priority 30 }
tag "点击领优惠券" when exists(events where type == "menu_click" and key == "领优惠券" within menu_window) { priority 30 }

tag "年龄-18至24" when age between 18 and 24 { priority 10 }
tag "年龄-25至34" when age between 25 and 34 { priority 10 }
tag "年龄-35以上" when age >= 35 { priority 10 }

tag "性别-男" when gender == 1 { priority 10 }
tag "性别-女" when gender == 2 { priority 10 }
