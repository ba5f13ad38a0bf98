let 客单价 = sum(orders.amount within 365d) / count(orders within 365d)

tag "地域-北京" when city == "北京"
    or city == "北京市"
    or province == "北京"
    or province == "北京市"
    or remark == "北京"

tag "高价值老客" when 客单价 >= 300
    and count(orders within 365d) >= 3
    and days_since(last_active_at) <= 30

tag "意向客" when count(events where type in ["menu_view", "menu_click", "text", "scan"] within 7d) >= 2
    and count(orders) == 0

audience "广州新人福利" = city == "广州"
    and not tag("地域-北京")
    and days_since(subscribe_time) >= 30 {
  description "关注满一个月的广州新粉丝，尚未购买"
  owner "增长组"
}
