# 群发人群（组合标签，《服务号用户管理》《精细化触达》）
#
# 人群不是微信标签，不占 100 个标签的名额；preview、export 和群发时使用。
# 都排除已取消关注的粉丝：subscribed 为 false，或最近一次关注/取消关注事件
# 是取消关注（粉丝表还没同步时以事件为准）；都不知道时视为仍在关注。

# -- 阈值（可调） --------------------------------------------------------------
let audience_newcomer_days = 30  # 广州新人福利：关注满 1 个月
let audience_launch_categories = ["护肤", "护肤品"]  # 新品推荐：购买过同类产品……
let audience_launch_window = 15d  # ……且近 15 天活跃

let audience_launch_active = exists(events where type != "unsubscribe" within audience_launch_window)
    or last_active_at > now() - audience_launch_window

let audience_reachable = not (subscribed == false)
    and not (last(events.type where type in ["subscribe", "unsubscribe"]) == "unsubscribe")

audience "广州新人福利" = audience_reachable
    and tag("地域-广州")
    and not tag("已购买")
    and days_since(subscribe_time) >= audience_newcomer_days {
  description "地域=广州 + 未购买过 + 关注满1个月：发广州专属新人福利"
}

audience "沉睡召回" = audience_reachable and tag("沉睡唤醒") {
  description "连续90天无互动：发专属召回福利"
}

audience "新品推荐" = audience_reachable
    and exists(orders where category in audience_launch_categories)
    and audience_launch_active {
  description "购买过同类产品 + 近15天活跃：推新品"
}

audience "复购提醒" = audience_reachable
    and (tag("预流失-纸巾") or tag("预流失-洗护") or tag("预流失-滤芯")) {
  description "处于任一品类复购日前后一周"
}

audience "大促优先" = audience_reachable and tag("促销敏感") and not tag("沉默") {
  description "促销敏感且未沉默：大促、新品时多触达"
}
